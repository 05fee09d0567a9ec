"""A minimal keep-alive HTTP/1.1 client, so the load generator costs little CPU.

The benchmark shares two cores with the broker, the worker and the bridge; a full-featured
client would measure itself as much as the bridge.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HttpConnection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, _, data = await self.post(path, body)
        return status, data

    async def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, _, data = await self.request("GET", path)
        return status, data

    async def post(
        self, path: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """POST a JSON body: the status, the headers (lower-case names), the JSON body."""
        return await self.request("POST", path, body)

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if self._reader is not None and self._reader.at_eof():
            await self.close()  # the server closed it while idle (uvicorn: after 5 s)
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        self._writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        data = await self._reader.readexactly(int(headers.get("content-length", 0)))
        return status, headers, json.loads(data) if data else {}

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._writer = None
