"""grpc.aio: a circuit breaker per method, all four call kinds: interceptors or guarded channel.

The same roles as meshbreaker.grpc, under the same names; one core (meshbreaker._adapter).
"""

from meshbreaker._adapter.rejection import FALLBACK_METADATA_KEY, STATE_METADATA_KEY
from meshbreaker.aio._calls import (
    FallbackCall,
    FallbackOnFailureCall,
    RejectedBulkheadError,
    RejectedCall,
    RejectedError,
    RejectedThrottledError,
    TrackedStream,
)
from meshbreaker.aio.guarded import GuardedChannel, guarded_channel
from meshbreaker.aio.interceptors import (
    AioBreakerInterceptor,
    StreamStreamBreakerInterceptor,
    StreamUnaryBreakerInterceptor,
    UnaryStreamBreakerInterceptor,
    UnaryUnaryBreakerInterceptor,
    breaker_interceptors,
)

__all__ = [
    "FALLBACK_METADATA_KEY",
    "STATE_METADATA_KEY",
    "AioBreakerInterceptor",
    "FallbackCall",
    "FallbackOnFailureCall",
    "GuardedChannel",
    "RejectedBulkheadError",
    "RejectedCall",
    "RejectedError",
    "RejectedThrottledError",
    "StreamStreamBreakerInterceptor",
    "StreamUnaryBreakerInterceptor",
    "TrackedStream",
    "UnaryStreamBreakerInterceptor",
    "UnaryUnaryBreakerInterceptor",
    "breaker_interceptors",
    "guarded_channel",
]
