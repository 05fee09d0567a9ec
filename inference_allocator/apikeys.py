"""API keys: who may call the bridge, and how urgent their requests may be.

``INFERENCE_API_KEYS`` (or the file named by ``INFERENCE_API_KEYS_FILE``) lists entries
``KEY:NAME[:MAX_PRIORITY][:ATTRIBUTE=VALUE]...``, separated by commas or new lines (``#``
starts a comment in the file). ``MAX_PRIORITY`` is the most urgent level the key may use
(default ``high``). The key's name is its tenant; its attributes are ``weight`` (its share
of tokens within a level against the other tenants', default 1) and the budgets
``tokens_per_minute``, ``requests_per_minute`` and ``tokens_per_day`` (default: none).
Unset both: no keys, the bridge is open (the default, as for a local ``dev`` stack).

Only SHA-256 digests of the keys are kept, and a presented key is compared with every one
of them by ``hmac.compare_digest``, so the time a check takes does not depend on how much
of a key was right, nor on which key matched. Keys never appear in messages or logs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError
from .schemas import Priority

#: the attributes an entry may set, and what each must be
BUDGETS = ("tokens_per_minute", "requests_per_minute", "tokens_per_day")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who presented a valid key: the key's name (it travels with each request as
    ``tenant``), the most urgent priority it may use, its weight among tenants, and its
    budgets (absent: none)."""

    name: str
    max_priority: Priority
    weight: float = 1.0
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None

    @property
    def budgeted(self) -> bool:
        return any(getattr(self, budget) is not None for budget in BUDGETS)

    def allows(self, priority: Priority) -> bool:
        return priority.rank >= self.max_priority.rank


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys, as digests."""

    def __init__(self, entries: list[tuple[str, Caller]]):
        self._entries = [(_digest(key), caller) for key, caller in entries]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, presented: str | None) -> Caller | None:
        """The caller whose key this is, or None; the same work whichever key matches."""
        if not presented:
            return None
        digest = _digest(presented)
        found = None
        for known, caller in self._entries:
            if hmac.compare_digest(digest, known):
                found = caller
        return found

    @classmethod
    def load(cls, keys: str | None, keys_file: str | None) -> KeyRing:
        """From ``INFERENCE_API_KEYS`` and ``INFERENCE_API_KEYS_FILE`` (either, both, none)."""
        entries = _parse(keys or "", "INFERENCE_API_KEYS")
        if keys_file:
            try:
                text = Path(keys_file).read_text()
            except OSError as exc:
                raise ConfigurationError(
                    f"INFERENCE_API_KEYS_FILE={keys_file}: cannot read it ({exc.strerror})"
                ) from None
            entries += _parse(text, f"INFERENCE_API_KEYS_FILE={keys_file}")
        names = [caller.name for _, caller in entries]
        if len(set(names)) != len(names):
            raise ConfigurationError("two API keys share a name; names must be unique")
        return cls(entries)

    def callers(self) -> list[Caller]:
        return [caller for _, caller in self._entries]

    def weights(self) -> dict[str, float]:
        """Each key's weight among the tenants, by name."""
        return {caller.name: caller.weight for _, caller in self._entries}


def _parse(text: str, source: str) -> list[tuple[str, Caller]]:
    """Entries ``KEY:NAME[:MAX_PRIORITY][:ATTRIBUTE=VALUE]...``; errors name an entry by
    position and name, never by its key."""
    entries: list[tuple[str, Caller]] = []
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    items = [item.strip() for line in lines for item in line.split(",")]
    for number, item in enumerate((i for i in items if i), start=1):
        parts = [p.strip() for p in item.split(":")]
        attributes = [p for p in parts[2:] if "=" in p]
        parts = [p for p in parts if "=" not in p]
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ConfigurationError(
                f"{source}: entry {number} is not KEY:NAME[:MAX_PRIORITY][:ATTRIBUTE=VALUE]..."
            )
        level = parts[2] if len(parts) == 3 else "high"
        try:
            priority = Priority(level)
        except ValueError:
            raise ConfigurationError(
                f"{source}: entry {number} ({parts[1]}) has max priority {level!r}; "
                "use high, medium or low"
            ) from None
        if len(parts[0]) < 16:
            raise ConfigurationError(
                f"{source}: entry {number} ({parts[1]}) has a key shorter than 16 "
                "characters; use a long random one (e.g. `openssl rand -hex 24`)"
            )
        settings = _attributes(attributes, f"{source}: entry {number} ({parts[1]})")
        entries.append((parts[0], Caller(parts[1], priority, **settings)))
    return entries


def _attributes(attributes: list[str], where: str) -> dict[str, float | int]:
    found: dict[str, float | int] = {}
    for attribute in attributes:
        name, _, text = (s.strip() for s in attribute.partition("="))
        try:
            if name == "weight":
                value: float | int = float(text)
            elif name in BUDGETS:
                value = int(text)
            else:
                raise ConfigurationError(
                    f"{where}: unknown attribute {name!r}; use weight, {', '.join(BUDGETS)}"
                )
        except ValueError:
            raise ConfigurationError(f"{where}: {name}={text!r} is not a number") from None
        if not value > 0:
            raise ConfigurationError(f"{where}: {name} must be above 0")
        found[name] = value
    return found
