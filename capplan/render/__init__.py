"""Renderers: turn core result dataclasses into tables, Markdown and JSON (may import rich)."""
