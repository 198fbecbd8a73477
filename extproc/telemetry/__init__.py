"""Metrics, logs (and, with the observability issue, traces)."""
