"""Exceptions of the Inference Allocator.

One root, each class saying whether retrying the same call may succeed::

    AllocatorError                 root; ``retriable`` tells whether a retry may help
    ├── ConfigurationError         a setting or argument that cannot work
    ├── BrokerError                anything about the Kafka broker
    │   ├── BrokerUnavailable      the bootstrap servers do not answer (retriable)
    │   ├── BrokerRefused          the broker answered, with an error (not retriable)
    │   ├── BrokerBinaryMissing    the embedded broker binary cannot be found
    │   ├── BrokerToolMissing      Java 17+ or Maven, needed for Apache Kafka, is missing
    │   └── BrokerStartFailed      a broker we start exited or never answered
    ├── ModelServerError           the local model server could not be fetched, built or run
    │   └── ToolchainMissing       cmake or a C++ compiler, needed to build it, is missing
    ├── PortInUse                  a port we were asked to listen on is taken
    ├── ModelNotServed             no pool of the fleet serves the requested model
    ├── QueueFull                  admission control refused a request (retriable)
    └── RequestTimedOut            no response before the request's deadline (retriable)
"""

from __future__ import annotations


class AllocatorError(Exception):
    """Raised for every failure the Inference Allocator reports itself."""

    retriable: bool = False


class ConfigurationError(AllocatorError):
    """Raised when a setting or command-line argument cannot work."""


class BrokerError(AllocatorError):
    """Raised when something about the Kafka broker goes wrong."""


class BrokerUnavailable(BrokerError):
    """Raised when the bootstrap servers cannot be reached."""

    retriable = True


class BrokerRefused(BrokerError):
    """Raised when the broker answers but refuses what a client asked (a setting, a feature)."""


class BrokerBinaryMissing(BrokerError):
    """Raised when the embedded Tansu broker binary cannot be located."""


class BrokerToolMissing(BrokerError):
    """Raised when Java 17+ or Maven, needed to fetch and run Apache Kafka, is missing."""


class BrokerStartFailed(BrokerError):
    """Raised when a broker we start exits, cannot be fetched, or never starts answering."""


class ModelServerError(AllocatorError):
    """Raised when the local model server cannot be fetched, built or started."""


class ToolchainMissing(ModelServerError):
    """Raised when cmake or a C++ compiler, needed to build llama-server, is missing."""


class PortInUse(AllocatorError):
    """Raised when a port we were asked to listen on is already taken."""


class ModelNotServed(AllocatorError):
    """Raised when a request names a model that no pool of the fleet serves."""


class RequestIdReused(AllocatorError):
    """Raised when a request reuses the id (or Idempotency-Key) of an earlier one that is
    waiting, running or answered, with another model, prompt or parameters."""


class QueueFull(AllocatorError):
    """Raised when admission control refuses a request because the queue is full;
    ``retry_after`` is when it would likely be admitted, in seconds."""

    retriable = True

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class PoolsDown(QueueFull):
    """Raised when every pool that serves the request's model is down: answered like a
    full queue (503 with ``Retry-After``), at once rather than after the deadline."""


class RequestTimedOut(AllocatorError):
    """Raised when no response arrives before the request's deadline."""

    retriable = True

    def __init__(self, message: str, request_id: str | None = None):
        super().__init__(message)
        self.request_id = request_id
