"""meshbreaker: circuit breakers for gRPC."""
