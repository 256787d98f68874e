"""capplan reference inference server: a transformers model behind FastAPI, admission control."""
