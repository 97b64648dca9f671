"""The four banking services; each runs as its own process (python -m ...services.<name>)."""
