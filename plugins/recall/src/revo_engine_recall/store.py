"""Milvus, the source of truth, through pymilvus: one code path for milvus-lite and servers.

Blocking calls; the engine runs them on its Milvus thread. The only expression sent to
Milvus is the purge's, over integers; everything else goes by primary key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

from mesh.errors import ConfigError
from revo_engine_recall.index import Row, Vector

__all__ = ["MilvusStore"]

log = logging.getLogger(__name__)

_FIELDS = ["id", "scope", "owner", "client_id", "text", "text_hash", "metadata",
           "created_ms", "updated_ms", "expires_ms", "merged"]
_TEXT_MAX = 65_535


def row_of(entity: dict[str, Any]) -> Row:
    metadata = entity.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return Row(id=entity["id"], scope=entity["scope"], owner=entity["owner"],
               client_id=entity["client_id"], text=entity["text"],
               text_hash=entity["text_hash"], metadata=dict(metadata),
               created_ms=int(entity["created_ms"]), updated_ms=int(entity["updated_ms"]),
               expires_ms=int(entity["expires_ms"]), merged=int(entity["merged"]))


def entity_of(row: Row, vector: Vector) -> dict[str, Any]:
    return {"id": row.id, "scope": row.scope, "owner": row.owner,
            "client_id": row.client_id, "text": row.text, "text_hash": row.text_hash,
            "metadata": row.metadata, "created_ms": row.created_ms,
            "updated_ms": row.updated_ms, "expires_ms": row.expires_ms,
            "merged": row.merged, "vector": vector.tolist()}


class MilvusStore:
    def __init__(self, uri: str, token: str, collection: str, dim: int) -> None:
        self.uri = uri
        self._token = token
        self.collection = collection
        self.dim = dim
        self._client: MilvusClient | None = None

    @property
    def client(self) -> MilvusClient:
        assert self._client is not None, "open() first"
        return self._client

    def open(self) -> None:
        self._client = MilvusClient(uri=self.uri, token=self._token)
        client = self._client
        if not client.has_collection(self.collection):
            self._create()
        else:
            self._check_dim()
        client.load_collection(self.collection)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _create(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("scope", DataType.VARCHAR, max_length=512)
        schema.add_field("owner", DataType.VARCHAR, max_length=128)
        schema.add_field("client_id", DataType.VARCHAR, max_length=256)
        schema.add_field("text", DataType.VARCHAR, max_length=_TEXT_MAX)
        schema.add_field("text_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("created_ms", DataType.INT64)
        schema.add_field("updated_ms", DataType.INT64)
        schema.add_field("expires_ms", DataType.INT64)
        schema.add_field("merged", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index = MilvusClient.prepare_index_params()
        # Milvus answers only while the in-process index loads; HNSW serves every size
        # that loads in reasonable time and needs no training.
        index.add_index("vector", index_type="HNSW", metric_type="COSINE",
                        params={"M": 16, "efConstruction": 128})
        self.client.create_collection(self.collection, schema=schema, index_params=index,
                                     consistency_level="Strong")
        log.info("created Milvus collection %s (dim %d) at %s", self.collection, self.dim,
                 self.uri)

    def _check_dim(self) -> None:
        described = self.client.describe_collection(self.collection)
        for field in described.get("fields", []):
            if field.get("name") == "vector":
                dim = int(field.get("params", {}).get("dim", self.dim))
                if dim != self.dim:
                    raise ConfigError(
                        f"Milvus collection {self.collection} at {self.uri} holds {dim}-"
                        f"dimension vectors; engines.recall.dim is {self.dim}. Use another "
                        "collection name, or the embedding model the collection was made for")

    # -- writes -------------------------------------------------------------------------

    def upsert(self, items: Sequence[tuple[Row, Vector]]) -> None:
        if items:
            self.client.upsert(self.collection, [entity_of(r, v) for r, v in items])

    def delete(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), 1000):
            self.client.delete(self.collection, ids=list(ids[start:start + 1000]))

    # -- reads --------------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> list[tuple[Row, Vector]]:
        if not ids:
            return []
        found = self.client.get(self.collection, ids=list(ids),
                                output_fields=[*_FIELDS, "vector"], consistency_level="Strong")
        return [(row_of(e), np.asarray(e["vector"], dtype=np.float32)) for e in found]

    def count(self) -> int:
        """How many memories the collection holds (what a load at start reads)."""
        found = self.client.query(self.collection, filter="", output_fields=["count(*)"],
                                  consistency_level="Strong")
        return int(found[0]["count(*)"]) if found else 0

    def scan(self, batch: int = 4000) -> Iterator[tuple[list[Row], Vector]]:
        """Every memory, in batches (the index's load at start)."""
        iterator = self.client.query_iterator(self.collection, batch_size=batch, filter="",
                                              output_fields=[*_FIELDS, "vector"],
                                              consistency_level="Strong")
        try:
            while True:
                entities = iterator.next()
                if not entities:
                    return
                rows = [row_of(e) for e in entities]
                vectors = np.asarray([e["vector"] for e in entities], dtype=np.float32)
                yield rows, vectors
        finally:
            iterator.close()

    def expired_ids(self, now_ms: int, limit: int) -> list[str]:
        found = self.client.query(self.collection,
                                  filter=f"expires_ms > 0 and expires_ms <= {now_ms:d}",
                                  output_fields=["id"], limit=limit, consistency_level="Strong")
        return [e["id"] for e in found]
