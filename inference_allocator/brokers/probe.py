"""Does a Kafka-protocol broker answer requests yet? One ApiVersions round trip, no event loop.

A listening socket is not enough: Apache Kafka binds its port before it processes
requests, so readiness is the first answered request. ApiVersions v0 is the one request
every broker (Tansu, Apache Kafka 4.x) must answer before a client negotiates anything.
"""

from __future__ import annotations

import socket
import struct

_API_VERSIONS = 18
_CORRELATION_ID = 0x1A2B
_CLIENT_ID = b"inference-allocator-probe"


def answers_api_versions(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once ``host:port`` answers an ApiVersions request without an error code."""
    header = struct.pack(">hhih", _API_VERSIONS, 0, _CORRELATION_ID, len(_CLIENT_ID))
    request = header + _CLIENT_ID
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _read_exactly(sock, 4))[0]
            body = _read_exactly(sock, min(size, 6))
    except (OSError, EOFError, struct.error):
        return False
    correlation_id, error_code = struct.unpack(">ih", body)
    return correlation_id == _CORRELATION_ID and error_code == 0


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data
