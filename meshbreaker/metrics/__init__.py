"""Exporters of breaker state to monitoring systems (install the `prometheus` extra)."""
