"""``[engines.recall]``: where memories are stored, how they are indexed and bounded."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from revo_engine_recall.index import IndexSettings

__all__ = ["RecallSettings"]


class RecallSettings(BaseModel):
    """Validated by the mesh (``EngineSpec.settings``); every node of a mesh should agree."""

    model_config = ConfigDict(extra="forbid")

    milvus_uri: str = Field("", description="a Milvus URI (http://host:19530) or a milvus-lite "
                            "file path; empty: <home>/recall.db (milvus-lite)")
    milvus_token: str = Field("", description="Milvus credentials, user:password or an API "
                              "key (prefer REVO_ENGINES__RECALL__MILVUS_TOKEN)")
    collection: str = Field("revo_memories", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
                            description="the Milvus collection")
    dim: int = Field(384, ge=2, le=32_768, description="vector dimension (the embedding "
                     "model's); fixed when the collection is created")
    embed_model: str = Field("", description="the ModelService embedding model; empty: the "
                             "mesh default")
    dedup_threshold: float = Field(0.95, gt=0, le=1.0, description="a new memory this close "
                                   "(cosine) to one in its scope is merged into it")
    scope_quota: int = Field(100_000, ge=1, description="memories one scope may hold")
    projects: dict[str, list[str]] = Field(
        default_factory=dict, description="project scope -> its members (users); '*' "
        "admits every caller. A project not listed admits every caller with the role's "
        "permission")
    batch_limit: int = Field(1000, ge=1, le=10_000, description="memories per Remember")
    text_limit_bytes: int = Field(16_384, ge=1, le=60_000, description="a memory's text "
                                  "at most (UTF-8)")
    metadata_limit_bytes: int = Field(8_192, ge=2, le=60_000, description="a memory's "
                                      "metadata at most, as JSON")
    max_top_k: int = Field(1000, ge=1, le=16_384, description="the largest top_k accepted")
    purge_interval_s: float = Field(30.0, gt=0, description="how often expired memories are "
                                    "deleted from Milvus")
    exact_max: int = Field(20_000, ge=1, description="searches over at most this many "
                           "candidates are exact; a larger collection gets an HNSW graph")
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW links per node")
    ef_construction: int = Field(64, ge=8, le=1024, description="HNSW build breadth")
    ef_search: int = Field(96, ge=8, le=4096, description="HNSW search breadth (recall vs "
                           "speed)")
    changes_max_age_s: float = Field(86_400.0, gt=0, description="how long the change feed "
                                     "keeps entries (a node down longer reloads from Milvus)")

    def index(self) -> IndexSettings:
        return IndexSettings(dim=self.dim, exact_max=self.exact_max, hnsw_m=self.hnsw_m,
                             ef_construction=self.ef_construction, ef_search=self.ef_search)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> RecallSettings:
        return cls.model_validate(raw)
