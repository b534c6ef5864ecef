"""The ledger: one durable record per model call, and usage summed from it.

Stream ``REVO_LEDGER`` (file storage) on ``revo.ledger.<user>``. A record holds who,
which model and provider, the provider's own token counts (cached tokens included), what
was paid, what the reference cloud model would have cost (savings), latency and any
fallback switches. Each record is acknowledged by JetStream before the call's final
message goes out, so a completed call is never missing from the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StorageType, StreamConfig

from mesh.models.budget import period_of
from mesh.transport import subjects
from mesh.transport.streams import ensure_stream

__all__ = ["Entry", "Ledger", "UsageRow", "summarize"]


@dataclass(frozen=True)
class Entry:
    time: float
    user: str
    model: str
    provider: str
    local: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    savings_usd: float
    latency_ms: float
    switches: int = 0


@dataclass
class UsageRow:
    user: str
    model: str
    period: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    savings_usd: float = 0.0
    local: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(entries: Iterable[Entry], period: str = "month") -> list[UsageRow]:
    """Entries summed by user, model and period, in that order."""
    rows: dict[tuple[str, str, str], UsageRow] = {}
    for entry in entries:
        key = (entry.user, entry.model, period_of(period, entry.time))
        row = rows.get(key)
        if row is None:
            row = rows[key] = UsageRow(*key, local=entry.local)
        row.requests += 1
        row.prompt_tokens += entry.prompt_tokens
        row.completion_tokens += entry.completion_tokens
        row.cached_tokens += entry.cached_tokens
        row.cost_usd += entry.cost_usd
        row.savings_usd += entry.savings_usd
    return [rows[k] for k in sorted(rows)]


class Ledger:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    async def start(self) -> None:
        await ensure_stream(self._nc, StreamConfig(
            name=subjects.LEDGER_STREAM, subjects=[f"{subjects.LEDGER_PREFIX}.>"],
            storage=StorageType.FILE, description="revo: one record per model call"))

    async def record(self, entry: Entry) -> None:
        """Append ``entry``; returns once JetStream has stored it."""
        subject = f"{subjects.LEDGER_PREFIX}.{subjects.subject_token(entry.user or '-')}"
        await self._nc.jetstream().publish(subject, json.dumps(asdict(entry)).encode())

    async def entries(self, user: str = "*", since: float = 0.0) -> list[Entry]:
        """Every entry of ``user`` (``*`` for all) from ``since`` (epoch seconds)."""
        js = self._nc.jetstream()
        info = await js.stream_info(subjects.LEDGER_STREAM)
        last = info.state.last_seq
        if not last:
            return []
        token = "*" if user == "*" else subjects.subject_token(user or "-")
        found: list[Entry] = []
        done = asyncio.Event()

        async def collect(msg: Msg) -> None:
            with contextlib.suppress(ValueError, TypeError):
                entry = Entry(**json.loads(msg.data))
                if entry.time >= since:
                    found.append(entry)
            if msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0:
                done.set()

        sub = await js.subscribe(f"{subjects.LEDGER_PREFIX}.{token}", cb=collect,
                                 ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
                                 stream=subjects.LEDGER_STREAM)
        try:
            pending = (await sub.consumer_info()).num_pending
            # none left to deliver: none matched, or they are being handled already
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2 if pending == 0 else 30.0)
        finally:
            await sub.unsubscribe()
        return found
