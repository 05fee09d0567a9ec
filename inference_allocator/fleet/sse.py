"""Server-sent events, as OpenAI-compatible servers stream completions: the ``data`` of each
event, line by line as the body comes (the event's name, ids and comments are not needed
to read a completion)."""

from __future__ import annotations


class EventData:
    """Feed the body's lines one by one; ``feed`` returns an event's data when a blank line
    ends it, ``end`` what is left when the body ends without one."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: bytes) -> str | None:
        text = line.decode("utf-8").rstrip("\r\n")
        if not text:
            return self.end()
        name, _, value = text.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def end(self) -> str | None:
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data
