"""Files of the OpenAI Files API (the input of batches), kept on Kafka so that every bridge
can read them and a restart keeps them.

* ``<prefix>.file-chunks`` (one partition, compacted): a file's content in records of at
  most ``CHUNK_BYTES``, keyed ``<file id>:<n>``.
* ``<prefix>.files`` (one partition, compacted): one record per file, keyed by its id: its
  OpenAI object, its owner, and the offsets of its chunks. Written after the chunks, so a
  file that is listed has its content on the broker. Deleting writes tombstones for both.

Each bridge reads ``files`` from its start (small: one record a file) and keeps the live
ones; content is read on demand, by seeking to the chunks' offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import BaseModel, ValidationError

from ..clients import assigned_consumer, make_producer, started
from ..config import Settings
from ..topics import Topics
from .compacted import TopicFollower

log = logging.getLogger(__name__)

#: the most content in one record (below the broker's default limit of 1 MiB a message)
CHUNK_BYTES = 512 * 1024


class FileObject(BaseModel):
    """OpenAI's file object."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class StoredFile(BaseModel):
    """A ``files`` record: the object, whose it is, where its content is, its lines."""

    file: FileObject
    owner: str | None = None  # the API key's name that uploaded it (None: no keys)
    chunks: list[int]  # offsets in ``file-chunks``, in order
    lines: int = 0


class FileStore:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.files: dict[str, StoredFile] = {}
        self._stack = contextlib.AsyncExitStack()
        self._producer: AIOKafkaProducer
        self._reading = asyncio.Lock()  # one content read at a time on the chunk reader
        self._chunks: AIOKafkaConsumer | None = None
        self._chunk_tp = TopicPartition(self.topics.file_chunks, 0)

    async def start(self, follower: TopicFollower | None = None) -> None:
        """Start writing; with ``follower``, its caller starts it (after this), else the
        files are read back here."""
        self._producer = await make_producer(
            self.settings, max_request_size=2 * CHUNK_BYTES, linger_ms=5
        )
        await self._stack.enter_async_context(started(self._producer, self.settings))
        own = follower is None
        follower = follower or TopicFollower(self.settings, "files")
        follower.follow(self.topics.files, self._apply)
        if own:
            await follower.start(self._stack)

    async def stop(self) -> None:
        await self._stack.aclose()

    def _apply(self, key: bytes, value: bytes | None) -> None:
        file_id = key.decode(errors="replace")
        if value is None:
            self.files.pop(file_id, None)
            return
        try:
            self.files[file_id] = StoredFile.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring a malformed record of file %s", file_id)

    def visible(self, owner: str | None) -> list[StoredFile]:
        """The files ``owner`` may see, newest first (without API keys: every file)."""
        found = [f for f in self.files.values() if owner is None or f.owner == owner]
        return sorted(found, key=lambda f: f.file.created_at, reverse=True)

    def get(self, file_id: str, owner: str | None) -> StoredFile | None:
        stored = self.files.get(file_id)
        if stored is None or (owner is not None and stored.owner != owner):
            return None
        return stored

    async def create(
        self,
        filename: str,
        purpose: str,
        content: bytes,
        owner: str | None,
        lines: int,
        file_id: str | None = None,
    ) -> FileObject:
        """Store a file; ``file_id``: its id (a batch's output files have one known before
        they are written, so that writing them again replaces them), else a new one."""
        file_id = file_id or f"file-{uuid.uuid4().hex}"
        sends = [
            await self._producer.send(
                self.topics.file_chunks,
                content[start : start + CHUNK_BYTES],
                key=f"{file_id}:{n}".encode(),
                partition=0,
            )
            for n, start in enumerate(range(0, max(len(content), 1), CHUNK_BYTES))
        ]
        offsets = [metadata.offset for metadata in await asyncio.gather(*sends)]
        file = FileObject(
            id=file_id,
            bytes=len(content),
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
        )
        stored = StoredFile(file=file, owner=owner, chunks=offsets, lines=lines)
        await self._producer.send_and_wait(
            self.topics.files, stored.model_dump_json().encode(), key=file_id.encode()
        )
        self.files[file_id] = stored  # before the follower reads it back
        return file

    async def content(self, stored: StoredFile) -> bytes:
        """The file's content, read back from its chunks."""
        async with self._reading:
            if self._chunks is None:
                self._chunks, _ = await assigned_consumer(
                    self.settings, self.topics.file_chunks, self._stack, fetch_max_wait_ms=50
                )
            consumer = self._chunks
            wanted = {offset: n for n, offset in enumerate(stored.chunks)}
            pieces: list[bytes | None] = [None] * len(stored.chunks)
            consumer.seek(self._chunk_tp, stored.chunks[0])
            prefix = f"{stored.file.id}:".encode()
            last = stored.chunks[-1]
            while any(piece is None for piece in pieces):
                batch = await consumer.getmany(self._chunk_tp, timeout_ms=5000)
                records = batch.get(self._chunk_tp, [])
                for record in records:
                    n = wanted.get(record.offset)
                    if n is not None and record.key and record.key.startswith(prefix):
                        pieces[n] = record.value or b""
                if not records or (records[-1].offset >= last and None in pieces):
                    raise LookupError(f"the content of {stored.file.id} is gone from the broker")
            return b"".join(piece or b"" for piece in pieces)

    async def delete(self, stored: StoredFile) -> None:
        file_id = stored.file.id
        sends = [
            await self._producer.send(
                self.topics.file_chunks, None, key=f"{file_id}:{n}".encode(), partition=0
            )
            for n in range(len(stored.chunks))
        ]
        sends.append(await self._producer.send(self.topics.files, None, key=file_id.encode()))
        await asyncio.gather(*sends)
        self.files.pop(file_id, None)
