"""capplan: capacity planning and load testing for GPU model-inference services."""

__version__ = "0.1.0"
