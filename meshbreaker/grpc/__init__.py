"""Sync gRPC client interceptors: one circuit breaker per method, all four call kinds.

meshbreaker.aio offers the same for grpc.aio channels, with the same names for the same roles.
"""

from meshbreaker._adapter.rejection import FALLBACK_METADATA_KEY, STATE_METADATA_KEY
from meshbreaker.grpc._calls import (
    FallbackCall,
    FallbackOnFailureCall,
    RejectedBulkheadCall,
    RejectedCall,
    RejectedThrottledCall,
    TrackedStream,
)
from meshbreaker.grpc.interceptor import BreakerInterceptor
from meshbreaker.grpc.service_config import service_config

__all__ = [
    "FALLBACK_METADATA_KEY",
    "STATE_METADATA_KEY",
    "BreakerInterceptor",
    "FallbackCall",
    "FallbackOnFailureCall",
    "RejectedBulkheadCall",
    "RejectedCall",
    "RejectedThrottledCall",
    "TrackedStream",
    "service_config",
]
