"""Sync gRPC client interceptors: one circuit breaker per method, all four call kinds."""

from meshbreaker.grpc._calls import FallbackOutcome, RejectedBulkheadCall, RejectedCall
from meshbreaker.grpc._core import FALLBACK_METADATA_KEY, STATE_METADATA_KEY
from meshbreaker.grpc.interceptor import BreakerInterceptor

__all__ = [
    "FALLBACK_METADATA_KEY",
    "STATE_METADATA_KEY",
    "BreakerInterceptor",
    "FallbackOutcome",
    "RejectedBulkheadCall",
    "RejectedCall",
]
