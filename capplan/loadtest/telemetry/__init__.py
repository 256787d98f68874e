"""Telemetry on the requests' clock: NVML per GPU, the target's /metrics and /stats, the host."""
