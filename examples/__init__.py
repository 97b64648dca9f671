"""Runnable examples for meshbreaker."""
