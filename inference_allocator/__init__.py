"""Inference Allocator: priority-aware allocation of GPU inference work on Kafka."""

from .config import Settings
from .errors import (
    AllocatorError,
    BrokerBinaryMissing,
    BrokerError,
    BrokerStartFailed,
    BrokerUnavailable,
    ConfigurationError,
    PortInUse,
    QueueFull,
    RequestTimedOut,
)
from .producers.client import InferenceClient
from .producers.request_producer import RequestProducer, Submitted
from .schemas import Priority, RequestRecord, ResponseRecord
from .streams.worker import Worker

__all__ = [
    "AllocatorError",
    "BrokerBinaryMissing",
    "BrokerError",
    "BrokerStartFailed",
    "BrokerUnavailable",
    "ConfigurationError",
    "InferenceClient",
    "PortInUse",
    "Priority",
    "QueueFull",
    "RequestProducer",
    "RequestRecord",
    "RequestTimedOut",
    "ResponseRecord",
    "Settings",
    "Submitted",
    "Worker",
]
