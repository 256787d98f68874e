"""Capacity and planning: sweep (highest safe load), plan (replicas), validate (estimate vs run)."""
