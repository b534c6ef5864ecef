"""The Perfect Recall tools: ``remember``, ``search``, ``list_memories`` and ``forget``
(``RecallService``).

Memories go to the key owner's own scope, or to a project's when the tool is given one.
Tags are kept in the memory's metadata under ``tags``; ``search`` filters on metadata
values (equality on top-level keys), not on tags.
"""

from __future__ import annotations

from typing import Annotated

from google.protobuf import json_format
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from mesh.mcp.access import MeshAccess
from revo_engine_recall.v1 import recall_pb2 as pb
from revo_engine_recall.v1 import recall_pb2_grpc

__all__ = ["Forgotten", "Listed", "Match", "Memory", "Remembered", "SearchResult",
           "register"]

TIMEOUT_S = 30.0
Scalar = str | float | bool


class Remembered(BaseModel):
    id: str = Field(description="the memory's id (for forget)")
    outcome: str = Field(description="stored (new), duplicate (the same text was there), "
                         "merged (folded into a near-duplicate, whose id this is) or "
                         "unchanged (a retry of the same write)")


class Memory(BaseModel):
    id: str
    text: str
    tags: list[str]
    metadata: dict[str, object]
    scope: str = Field(description="user:<name> or project:<id>, ...")
    owner: str = Field(description="the user who stored it")
    created_at: str = Field(description="RFC 3339")


class Match(Memory):
    score: float = Field(description="cosine similarity to the query, -1 to 1 (higher is "
                         "closer)")


class Listed(BaseModel):
    memories: list[Memory] = Field(description="oldest first")
    next_page_token: str = Field(description="pass as page_token for the next page; empty "
                                 "on the last")


class SearchResult(BaseModel):
    matches: list[Match] = Field(description="best first")


class Forgotten(BaseModel):
    forgotten: int = Field(description="how many memories were deleted")


def _scope(project: str) -> pb.Scope:
    if project:
        return pb.Scope(kind=pb.SCOPE_KIND_PROJECT, id=project)
    return pb.Scope(kind=pb.SCOPE_KIND_USER)


def _scope_name(scope: pb.Scope) -> str:
    kind = pb.ScopeKind.Name(scope.kind).removeprefix("SCOPE_KIND_").lower()
    if scope.kind == pb.SCOPE_KIND_PROJECT:
        return f"project:{scope.id}"
    if scope.kind == pb.SCOPE_KIND_USER:
        return f"user:{scope.user}"
    return f"{kind}:{scope.user}/{scope.id}"


def _memory(memory: pb.Memory) -> Memory:
    metadata = json_format.MessageToDict(memory.metadata)
    tags = metadata.pop("tags", [])
    return Memory(id=memory.id, text=memory.text,
                  tags=[str(t) for t in tags] if isinstance(tags, list) else [str(tags)],
                  metadata=metadata, scope=_scope_name(memory.scope), owner=memory.owner,
                  created_at=memory.created_at.ToJsonString())


def _match(hit: pb.Hit) -> Match:
    return Match(**_memory(hit.memory).model_dump(), score=round(hit.score, 6))


def _condition(key: str, value: Scalar) -> pb.Condition:
    condition = pb.Condition(key=key)
    if isinstance(value, bool):
        condition.value.bool_value = value
    elif isinstance(value, int | float):
        condition.value.number_value = float(value)
    else:
        condition.value.string_value = value
    return condition


def register(server: MCPServer, access: MeshAccess) -> None:
    """Add the memory tools to ``server``."""
    recall = recall_pb2_grpc.RecallServiceStub(access.channel)

    async def remember(
        text: Annotated[str, Field(min_length=1, description="the fact to remember, in a "
                                   "sentence or a short paragraph")],
        ctx: Context,
        tags: Annotated[list[str], Field(max_length=32, description="labels kept with "
                                         "the memory (returned by search)")] = [],  # noqa: B006
        metadata: Annotated[dict[str, Scalar], Field(description="more facts about the "
                                                     "memory: keys are identifiers, values "
                                                     "strings, numbers or booleans; search "
                                                     "can filter on them")] = {},  # noqa: B006
        project: Annotated[str, Field(description="a project to share the memory with; "
                                      "empty: the key owner's own memories")] = "",
        ttl_s: Annotated[float | None, Field(gt=0, description="forget it after this many "
                                             "seconds; unset: keep until forgotten")] = None,
    ) -> Remembered:
        if tags and "tags" in metadata:
            raise ToolError("INVALID_ARGUMENT: give tags either as tags or as "
                            "metadata['tags'], not both")
        item = pb.MemoryInput(scope=_scope(project), text=text)
        if metadata or tags:
            item.metadata.update({**metadata, **({"tags": list(tags)} if tags else {})})
        if ttl_s is not None:
            item.ttl.FromNanoseconds(round(ttl_s * 1e9))
        with access.errors():
            reply = await recall.Remember(pb.RememberRequest(memories=[item]),
                                          metadata=access.metadata(ctx), timeout=TIMEOUT_S)
        access.sequence = max(access.sequence, reply.sequence)
        (result,) = reply.results
        return Remembered(id=result.id,
                          outcome=pb.Outcome.Name(result.outcome).removeprefix("OUTCOME_")
                          .lower())

    async def search(
        query: Annotated[str, Field(min_length=1, description="what to look for, in words: "
                                    "memories are found by meaning")],
        ctx: Context,
        top_k: Annotated[int, Field(ge=1, le=100, description="how many matches at most")
                         ] = 5,
        min_score: Annotated[float, Field(ge=-1, le=1, description="leave out matches less "
                                          "similar than this (cosine)")] = 0.0,
        project: Annotated[str, Field(description="search only this project's memories; "
                                      "empty: every memory the key owner may see")] = "",
        where: Annotated[dict[str, Scalar], Field(description="only memories whose metadata "
                                                  "has these exact values")] = {},  # noqa: B006
    ) -> SearchResult:
        request = pb.SearchRequest(text=query, top_k=top_k, min_score=min_score,
                                   after_sequence=access.sequence,
                                   filters=[_condition(k, v) for k, v in where.items()])
        if project:
            request.scopes.append(_scope(project))
        with access.errors():
            reply = await recall.Search(request, metadata=access.metadata(ctx),
                                        timeout=TIMEOUT_S)
        return SearchResult(matches=[_match(hit) for hit in reply.hits])

    async def list_memories(
        ctx: Context,
        project: Annotated[str, Field(description="list this project's memories; empty: "
                                      "the key owner's own")] = "",
        page_size: Annotated[int, Field(ge=0, le=1000, description="memories per page; 0: "
                                        "100")] = 0,
        page_token: Annotated[str, Field(description="the previous page's "
                                         "next_page_token; empty: the first page")] = "",
    ) -> Listed:
        request = pb.ListMemoriesRequest(scope=_scope(project), page_size=page_size,
                                         page_token=page_token,
                                         after_sequence=access.sequence)
        with access.errors():
            reply = await recall.ListMemories(request, metadata=access.metadata(ctx),
                                              timeout=TIMEOUT_S)
        return Listed(memories=[_memory(m) for m in reply.memories],
                      next_page_token=reply.next_page_token)

    async def forget(
        ids: Annotated[list[str], Field(min_length=1, max_length=1000, description="ids of "
                                        "memories to delete (from remember or search)")],
        ctx: Context,
    ) -> Forgotten:
        with access.errors():
            reply = await recall.Forget(pb.ForgetRequest(ids=ids),
                                        metadata=access.metadata(ctx), timeout=TIMEOUT_S)
        access.sequence = max(access.sequence, reply.sequence)
        return Forgotten(forgotten=reply.forgotten)

    server.add_tool(remember, title="Remember", description=(
        "Store a fact in revo's long-term memory (Perfect Recall), so that later searches "
        "by meaning find it. An identical or near-identical memory is merged, not stored "
        "twice."), annotations=ToolAnnotations(idempotent_hint=True, destructive_hint=False))
    server.add_tool(search, title="Search memories", description=(
        "Find memories by meaning (semantic search over what was remembered): returns the "
        "closest memories with their similarity scores, best first."),
        annotations=ToolAnnotations(read_only_hint=True))
    server.add_tool(list_memories, title="List memories", description=(
        "Every memory of the key owner's (or a project's), oldest first, a page at a time: "
        "pass next_page_token back as page_token until it is empty."),
        annotations=ToolAnnotations(read_only_hint=True))
    server.add_tool(forget, title="Forget", description=(
        "Delete memories by id. Returns how many were deleted (ids that are unknown or "
        "not the key owner's are skipped)."),
        annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
