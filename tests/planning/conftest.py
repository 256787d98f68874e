"""The planning tests use the regression tests' real emulated servers and run helpers."""

from __future__ import annotations

from ..regression.conftest import serve_emulated

__all__ = ["serve_emulated"]
