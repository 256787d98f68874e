"""capplan estimator: memory, concurrency and latency from first principles."""
