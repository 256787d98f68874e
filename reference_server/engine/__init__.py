"""The transformers backend's engine: a fixed KV pool, reservation admission, chunked prefill."""
