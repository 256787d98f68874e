"""Regression checks on finished runs: thresholds, compare, and the statistics behind them."""
