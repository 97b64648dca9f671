"""Sync gRPC: a circuit breaker per method, all four call kinds: interceptor or guarded channel.

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
from meshbreaker.grpc.guarded import GuardedChannel, guarded_channel
from meshbreaker.grpc.interceptor import BreakerInterceptor
from meshbreaker.grpc.service_config import service_config

__all__ = [
    "FALLBACK_METADATA_KEY",
    "STATE_METADATA_KEY",
    "BreakerInterceptor",
    "FallbackCall",
    "FallbackOnFailureCall",
    "GuardedChannel",
    "RejectedBulkheadCall",
    "RejectedCall",
    "RejectedThrottledCall",
    "TrackedStream",
    "guarded_channel",
    "service_config",
]
