"""Generated sets, kept in JetStream KV so that ``Choose`` works on any node.

A set is stored once, when its summary is sent, under its id, as JSON: the owner, the
problem and constraints, and each candidate's text and scores. The bucket's TTL
(``set_ttl_s``) expires it; a set that expired or never existed is ``NOT_FOUND``.
"""

from __future__ import annotations

import json
from typing import Any

from mesh.transport import kv
from mesh.transport.connection import MeshConnection

__all__ = ["BUCKET", "SetStore"]

BUCKET = "creative_sets"


class SetStore:
    def __init__(self, nc: MeshConnection, ttl_s: float) -> None:
        self._nc = nc
        self._ttl_s = ttl_s
        self._bucket: kv.KeyValue | None = None

    async def start(self) -> None:
        self._bucket = await kv.open_bucket(
            self._nc, BUCKET, ttl=self._ttl_s,
            description="revo Creative: generated sets, for Choose")

    async def put(self, set_id: str, record: dict[str, Any]) -> None:
        if self._bucket is None:
            raise RuntimeError("SetStore.start() first")
        await self._bucket.put(set_id, json.dumps(record, separators=(",", ":")).encode())

    async def get(self, set_id: str) -> dict[str, Any] | None:
        found = await kv.latest(self._nc, BUCKET, set_id)
        if found is None:
            return None
        record: dict[str, Any] = json.loads(found[0])
        return record
