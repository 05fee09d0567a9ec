"""Fair shares of tokens among tenants within a priority level: the Virtual Token Counter
of Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024).

Each tenant has a counter per level: the tokens it was served there, each input token
counted ``input_weight`` and each output token ``output_weight`` (output costs the server
more; the paper uses 1:2), divided by the tenant's ``weight``. Within a level the
dispatcher serves the backlogged tenant with the smallest counter, FIFO within it; levels
are ordered as before (strict or weighted, with ageing). It is work-conserving: a tenant
alone gets every slot.

* **When tokens are counted**: a run that starts is charged its prompt, estimated from its
  length (4 characters a token) until its answer says; the answer replaces the estimate by
  the server's ``usage`` (prompt and completion tokens). A run cut short (preempted,
  cancelled, failed) is charged nothing: it is charged when it runs again.
* **No banking of idle time**: a tenant that becomes backlogged again starts at least at the
  smallest counter of the tenants backlogged at that level, or, when none is, at the
  counter the last tenant to stop waiting there had then (the paper's lift).
* **Across a leader takeover**: every worker counts the answers on the responses topic as
  its result follower reads them (those of other workers: its own it counts as it gives
  them), so a standby that takes over holds the same counters, up to the answers of the
  retention window it read back at start. Lifts are not on the topic; they are made again
  as tenants become backlogged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..schemas import DEFAULT_TENANT, Priority, RequestRecord, ResponseRecord

#: characters per token, to estimate a prompt's tokens before the server counts them
CHARS_PER_TOKEN = 4


def tenant_of(request: RequestRecord | ResponseRecord) -> str:
    return request.tenant or DEFAULT_TENANT


@dataclass(slots=True)
class _Charge:
    level: Priority
    tenant: str
    amount: float


class FairShare:
    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        input_weight: float = 1.0,
        output_weight: float = 2.0,
    ):
        self.weights = dict(weights or {})
        self.input_weight = input_weight
        self.output_weight = output_weight
        #: tokens served, weighted, per level and tenant (answers given)
        self.served: dict[Priority, dict[str, float]] = {}
        #: estimates charged for runs that have not answered yet, by request id
        self._running: dict[str, _Charge] = {}
        #: the same, summed per level and tenant
        self._charged: dict[Priority, dict[str, float]] = {}
        #: per level, the counter of the last tenant that stopped waiting, as it was then
        self._last_left: dict[Priority, float] = {}

    def counter(self, level: Priority, tenant: str) -> float:
        return self.served.get(level, {}).get(tenant, 0.0) + self._charged.get(level, {}).get(
            tenant, 0.0
        )

    def tenants(self, level: Priority) -> list[str]:
        """The tenants with a counter at ``level``."""
        return list({**self.served.get(level, {}), **self._charged.get(level, {})})

    def choose(self, level: Priority, tenants: Iterable[str]) -> str:
        """The tenant of ``tenants`` (backlogged at ``level``) served next: the smallest
        counter (ties: the first given)."""
        return min(tenants, key=lambda tenant: self.counter(level, tenant))

    def backlogged(self, level: Priority, tenant: str, others: Iterable[str]) -> None:
        """``tenant`` has a request waiting at ``level`` again, beside ``others``: it starts
        no lower than the smallest of their counters (none: the last one to leave's)."""
        floor = min((self.counter(level, other) for other in others if other != tenant),
                    default=self._last_left.get(level))  # fmt: skip
        if floor is not None and self.counter(level, tenant) < floor:
            level_served = self.served.setdefault(level, {})
            level_served[tenant] = (
                level_served.get(tenant, 0.0) + floor - self.counter(level, tenant)
            )

    def forget_idle(self, level: Priority, waiting: Iterable[str]) -> list[str]:
        """Forget the counters of tenants neither waiting nor running at ``level`` that a
        lift would raise anyway (at or below the smallest counter of those waiting, or of
        the last to leave): what they were served no longer orders anything, and tenants
        that come and go (an OpenAI ``user`` each) must not grow this without bound.
        Returns the tenants forgotten."""
        waiting = list(waiting)
        floor = min((self.counter(level, t) for t in waiting),
                    default=self._last_left.get(level))  # fmt: skip
        served = self.served.get(level, {})
        if floor is None or not served:
            return []
        charged = self._charged.get(level, {})
        gone = [t for t, v in served.items()
                if v <= floor and t not in charged and t not in waiting]  # fmt: skip
        for tenant in gone:
            del served[tenant]
        return gone

    def idle(self, level: Priority, tenant: str) -> None:
        """``tenant`` has nothing waiting at ``level`` any more."""
        self._last_left[level] = self.counter(level, tenant)

    def started(self, request_id: str, level: Priority, request: RequestRecord) -> None:
        """A run starts: its prompt is charged, estimated."""
        tenant = tenant_of(request)
        tokens = len(request.prompt) / CHARS_PER_TOKEN
        amount = tokens * self.input_weight / self._weight(tenant)
        self._release(request_id)
        self._running[request_id] = _Charge(level, tenant, amount)
        charged = self._charged.setdefault(level, {})
        charged[tenant] = charged.get(tenant, 0.0) + amount

    def dropped(self, request_id: str) -> None:
        """A run was cut short without an answer (it will run again, or never): its
        estimate is taken back."""
        self._release(request_id)

    def ran(self, request_id: str, usage: dict[str, int] | None, ok: bool) -> None:
        """A run here ended (before its slot takes the next request): the tokens its server
        says it used are counted instead of its estimate; a failed run counts nothing."""
        charge = self._release(request_id)
        if charge is None or not ok:
            return
        amount = self._amount(charge.tenant, usage)
        self._serve(charge.level, charge.tenant, charge.amount if amount is None else amount)

    def answered(self, response: ResponseRecord) -> None:
        """Another worker's answer (read from the responses topic): the tokens it says it
        used are counted."""
        self._release(response.request_id)  # ran here once, then elsewhere: theirs counts
        amount = self._amount(tenant_of(response), response.usage)
        if response.priority is not None and amount is not None:
            self._serve(response.priority, tenant_of(response), amount)

    def _amount(self, tenant: str, usage: dict[str, int] | None) -> float | None:
        """The weighted tokens ``usage`` counts; None when it counts none."""
        usage = usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if prompt is None and completion is None:
            return None
        weighted = (prompt or 0) * self.input_weight + (completion or 0) * self.output_weight
        return weighted / self._weight(tenant)

    def _serve(self, level: Priority, tenant: str, amount: float) -> None:
        level_served = self.served.setdefault(level, {})
        level_served[tenant] = level_served.get(tenant, 0.0) + amount

    def _weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)

    def _release(self, request_id: str) -> _Charge | None:
        charge = self._running.pop(request_id, None)
        if charge is not None:
            charged = self._charged[charge.level]
            charged[charge.tenant] -= charge.amount
            if abs(charged[charge.tenant]) < 1e-9:
                del charged[charge.tenant]
        return charge
