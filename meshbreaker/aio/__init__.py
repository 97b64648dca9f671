"""grpc.aio client interceptors: one circuit breaker per method, all four call kinds."""

from meshbreaker.aio._calls import (
    AioRejectedBulkheadError,
    AioRejectedError,
    FallbackAioCall,
    RejectedAioCall,
)
from meshbreaker.aio.interceptors import (
    AioBreakerInterceptor,
    StreamStreamBreakerInterceptor,
    StreamUnaryBreakerInterceptor,
    UnaryStreamBreakerInterceptor,
    UnaryUnaryBreakerInterceptor,
    breaker_interceptors,
)

__all__ = [
    "AioBreakerInterceptor",
    "AioRejectedBulkheadError",
    "AioRejectedError",
    "FallbackAioCall",
    "RejectedAioCall",
    "StreamStreamBreakerInterceptor",
    "StreamUnaryBreakerInterceptor",
    "UnaryStreamBreakerInterceptor",
    "UnaryUnaryBreakerInterceptor",
    "breaker_interceptors",
]
