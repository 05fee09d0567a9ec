"""Ports on loopback: is one free to listen on, and a free one for tests and benchmarks."""

from __future__ import annotations

import errno
import socket

from .errors import PortInUse


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Raise ``PortInUse`` with a clear message when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(
                    f"cannot start the {what}: port {port} on {host} is already in use "
                    f"(choose another with {flag})"
                ) from None
            raise


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
