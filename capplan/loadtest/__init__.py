"""capplan load generation, measurement and reports."""
