"""``revo.recall.v1.RecallService``: remember, search, update and forget memories.

An :class:`~mesh.engine.AsyncEngine`. Milvus is the source of truth; each node answers
reads from its in-process :class:`~revo_engine_recall.index.MemoryIndex`, which the change
feed keeps consistent with Milvus. A write goes Milvus, then the feed, and answers once the
node's index has applied it. Index work runs on one thread and Milvus calls on another, so
the loop never blocks on either (docs/recall.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mesh.engine import AsyncEngine, Context
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mesh.observability import tracing
from mesh.pagination import decode_page_token, encode_page_token, page_size, take_page
from mesh.v1 import models_pb2, models_pb2_grpc
from revo_engine_recall.changes import ChangeFeed
from revo_engine_recall.filters import metadata_dict, predicate
from revo_engine_recall.index import MemoryIndex, Row, SearchHit, Vector, unit
from revo_engine_recall.lite import LiteServer
from revo_engine_recall.metrics import RecallMetrics
from revo_engine_recall.replica import IndexReplica
from revo_engine_recall.scopes import Access, scope_key, scope_message
from revo_engine_recall.settings import RecallSettings
from revo_engine_recall.store import MilvusStore, entity_of
from revo_engine_recall.v1 import recall_pb2 as pb
from revo_engine_recall.writes import Item, plan, text_hash

__all__ = ["RecallEngine"]

log = logging.getLogger(__name__)

SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
"""``milvus_uri`` prefixes of a Milvus server; anything else is a milvus-lite directory."""
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,256}$")
_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_IDS = 1000
_WAIT_S = 5.0
"""How long a write waits for its own change to come back through the feed."""
T = TypeVar("T")


def _millis(duration: Any) -> int:
    return int(duration.ToMilliseconds())


class RecallEngine(AsyncEngine):
    services = (pb.DESCRIPTOR.services_by_name["RecallService"],)
    settings: RecallSettings

    async def start(self) -> None:
        s, runtime = self.settings, self.runtime
        uri = s.milvus_uri or str(Path(runtime.config.home) / "recall.db")
        self.lite: LiteServer | None = None
        if not uri.startswith(SERVER_SCHEMES):  # a milvus-lite data directory
            log = Path(runtime.config.home) / "logs" / f"milvus-lite-{runtime.node_id}.log"
            self.lite = await LiteServer.shared(Path(uri), log)
            uri = self.lite.uri
        self.store = MilvusStore(uri, s.milvus_token, s.collection, s.dim)
        self._milvus = ThreadPoolExecutor(1, thread_name_prefix="recall-milvus")
        self.replica = IndexReplica(s.index(), s.dim)
        self.purged = 0
        self._writes = asyncio.Lock()
        try:
            await self._on_milvus(self.store.open)
        except BaseException:
            if self.lite is not None:
                self.lite.release()
            raise
        self.feed = ChangeFeed(runtime.nc, s.collection, s.changes_max_age_s)
        start_sequence = await self.feed.open()
        self.auth = runtime.config.auth.enabled
        self.metrics = RecallMetrics(runtime.metrics, self.replica, lambda: self.purged)
        runtime.report_loading(0, 0, "memories")  # LOADING from the node's first announcement
        self._tasks = [asyncio.create_task(self._load(start_sequence)),
                       asyncio.create_task(self._purge_loop())]

    async def stop(self) -> None:
        tasks = self._tasks
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.feed.close()
        await self._on_milvus(self.store.close)
        if self.lite is not None:
            await self._on_milvus(self.lite.release)
        self._milvus.shutdown(wait=True)
        await self.replica.close()

    # -- threads ----------------------------------------------------------------------

    async def _on_milvus(self, fn: Callable[..., T], *args: Any) -> T:
        span = (tracing.db_span("milvus", fn.__name__, self.store.collection)
                if tracing.active() else None)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._milvus, fn, *args)
        except Exception as exc:
            if span is not None:
                tracing.end_client(span, exc)
                span = None
            if type(exc).__module__.startswith("pymilvus"):
                raise Unavailable(f"Milvus at {self.store.uri} failed: {exc}") from exc
            raise
        finally:
            if span is not None:
                tracing.end_client(span)

    # -- the index replica ---------------------------------------------------------------

    async def _load(self, start_sequence: int) -> None:
        """Read every memory from Milvus into the replica, then follow the feed from the
        sequence taken before the read (so nothing written meanwhile is missed)."""
        runtime = self.runtime
        try:
            total = await self._on_milvus(self.store.count)
        except Exception as exc:  # the figures are for people; the load goes on without
            log.warning("recall: could not count the memories to load: %s", exc)
            total = 0
        runtime.report_loading(0, total, "memories")
        scan = self.store.scan()

        async def batches() -> AsyncIterator[tuple[list[Row], Vector]]:
            while (batch := await self._on_milvus(next, scan, None)) is not None:
                yield batch

        # a write during the load can make the count grow: never show more done than total
        await self.replica.load(batches(), lambda done: runtime.report_loading(
            done, max(total, done), "memories"))
        runtime.report_loaded()
        await self.feed.follow(start_sequence, self._apply)

    async def _apply(self, change: pb.Change, sequence: int) -> None:
        """Apply one change of the feed (called in stream order)."""
        upserts = [(Row(id=r.id, scope=r.scope, owner=r.owner, client_id=r.client_id,
                        text=r.text, text_hash=r.text_hash, metadata=json.loads(r.metadata),
                        created_ms=r.created_ms, updated_ms=r.updated_ms,
                        expires_ms=r.expires_ms, merged=r.merged),
                    np.asarray(r.vector, dtype=np.float32)) for r in change.upserts]
        await self.replica.apply(upserts, list(change.deletes))

    async def _write(self, upserts: Sequence[tuple[Row, Vector]],
                     deletes: Sequence[str]) -> int:
        """Milvus, then the feed; returns once this node's index has the change."""
        if upserts:
            await self._on_milvus(self.store.upsert, list(upserts))
        if deletes:
            await self._on_milvus(self.store.delete, list(deletes))
        change = pb.Change(node=self.runtime.node_id, deletes=deletes)
        for row, vector in upserts:
            entity = entity_of(row, vector)
            change.upserts.append(pb.Record(
                **{k: v for k, v in entity.items() if k != "metadata"},
                metadata=row.metadata_json()))
        try:
            sequence = await self.feed.publish(change)
        except Exception as exc:
            raise Unavailable(f"the write is in Milvus but could not be announced to the "
                              f"mesh ({exc}); retry it (with client_id it is idempotent)"
                              ) from exc
        await self.feed.reached(sequence, _WAIT_S)
        return sequence

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval_s)
            try:
                await self.purge()
            except Exception:
                log.exception("recall: purging expired memories failed")

    async def purge(self) -> int:
        """Delete expired memories from Milvus (and so from every index)."""
        if self.replica.index is None:
            return 0
        now = int(time.time() * 1000)
        ids = await self.replica.run(self.replica.index.expired, now, 10_000)
        if ids:
            async with self._writes:
                await self._write([], ids)
            self.purged += len(ids)
        return len(ids)

    # -- helpers ----------------------------------------------------------------------

    def _access(self, ctx: Context) -> Access:
        return Access(ctx.caller, ctx.role, self.auth, self.settings.projects)

    def _vector(self, values: Sequence[float], where: str) -> Vector | None:
        if not values:
            return None
        if len(values) != self.settings.dim:
            raise InvalidArgument(f"{where}: the vector has {len(values)} dimensions; this "
                                  f"collection's are {self.settings.dim}")
        vector = np.asarray(values, dtype=np.float32)
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            raise InvalidArgument(f"{where}: the vector must be finite and not all zeros")
        return unit(vector)

    def _text(self, text: str, where: str) -> str:
        if not text.strip():
            raise InvalidArgument(f"{where}: text is empty")
        size = len(text.encode())
        if size > self.settings.text_limit_bytes:
            raise InvalidArgument(f"{where}: text of {size} bytes is over the limit of "
                                  f"{self.settings.text_limit_bytes} bytes")
        return text

    async def _embed(self, texts: list[str], ctx: Context) -> list[Vector]:
        channel = self.runtime.channel(ctx)  # as the caller, within the caller's deadline
        models = models_pb2_grpc.ModelServiceStub(channel)
        if not channel.serves(models.Embed):
            raise FailedPrecondition("no node serves ModelService.Embed, which makes "
                                     "embeddings from text: start the models engine (revo "
                                     "up does) or send vectors")
        reply = await models.Embed(
            models_pb2.EmbedRequest(texts=texts, model=self.settings.embed_model), timeout=30.0)
        vectors = [np.asarray(e.values, dtype=np.float32) for e in reply.embeddings]
        if len(vectors) != len(texts) or any(len(v) != self.settings.dim for v in vectors):
            raise FailedPrecondition(
                f"the embedding model {reply.model!r} made {len(vectors[0]) if vectors else 0}"
                f"-dimension vectors; engines.recall.dim is {self.settings.dim}")
        return [unit(v) for v in vectors]

    def _memory(self, row: Row) -> pb.Memory:
        memory = pb.Memory(id=row.id, scope=scope_message(row.scope), text=row.text,
                           merged=row.merged, client_id=row.client_id, owner=row.owner)
        if row.metadata:
            memory.metadata.update(row.metadata)
        memory.created_at.FromMilliseconds(row.created_ms)
        memory.updated_at.FromMilliseconds(row.updated_ms)
        if row.expires_ms:
            memory.expires_at.FromMilliseconds(row.expires_ms)
        return memory

    def _known_scopes(self, index: MemoryIndex, access: Access) -> list[str]:
        return [k for k in index.scopes() if access.allows(k)]

    async def _after(self, sequence: int, ctx: Context) -> None:
        if sequence:
            await self.feed.reached(sequence, max(0.01, min(_WAIT_S, ctx.time_remaining())))

    def _visible_row(self, index: MemoryIndex, memory_id: str, access: Access,
                     now_ms: int) -> Row | None:
        row = index.get(memory_id) if _ID.fullmatch(memory_id) else None
        if row is None or row.expired(now_ms) or not access.allows(row.scope):
            return None
        return row

    # -- RecallService ----------------------------------------------------------------

    async def remember(self, request: pb.RememberRequest,
                       ctx: Context) -> pb.RememberResponse:
        s = self.settings
        if not request.memories:
            raise InvalidArgument("Remember needs at least one memory")
        if len(request.memories) > s.batch_limit:
            raise InvalidArgument(f"Remember takes at most {s.batch_limit} memories at once, "
                                  f"got {len(request.memories)}; split the batch")
        access = self._access(ctx)
        checked: list[tuple[str, str, dict[str, Any], int, str, Vector | None]] = []
        for i, given in enumerate(request.memories):
            where = f"memories[{i}]"
            scope = access.check(scope_key(given.scope, access.caller, f"{where}.scope"),
                                 where)
            text = self._text(given.text, where)
            metadata = metadata_dict(given.metadata, s.metadata_limit_bytes, where)
            ttl_ms = _millis(given.ttl) if given.HasField("ttl") else 0
            if given.HasField("ttl") and ttl_ms <= 0:
                raise InvalidArgument(f"{where}: ttl must be more than 0 (leave it unset to "
                                      "keep the memory until forgotten)")
            if given.client_id and not _CLIENT_ID.fullmatch(given.client_id):
                raise InvalidArgument(f"{where}: client_id must be 1 to 256 printable ASCII "
                                      "characters without spaces")
            # a call with an idempotency key (a workflow step's, say) is idempotent item by
            # item, as if each memory had a client_id of its own
            client_id = given.client_id or (f"{ctx.idempotency_key}#{i}"
                                            if ctx.idempotency_key else "")
            checked.append((scope, text, metadata, ttl_ms, client_id,
                            self._vector(given.vector, f"{where}.vector")))
        index = self.replica.ready()
        missing = [i for i, c in enumerate(checked) if c[5] is None]
        if missing:
            made = await self._embed([checked[i][1] for i in missing], ctx)
            for i, vector in zip(missing, made, strict=True):
                checked[i] = (*checked[i][:5], vector)
        items = [Item(scope=c[0], text=c[1], metadata=c[2], ttl_ms=c[3], client_id=c[4],
                      vector=c[5]) for c in checked if c[5] is not None]
        async with self._writes:
            index = self.replica.ready()
            decided = await self.replica.run(plan, index, items, access.caller,
                                           int(time.time() * 1000), s.dedup_threshold,
                                           s.scope_quota)
            sequence = 0
            if decided.writes:
                sequence = await self._write(list(decided.writes.values()), [])
        self.metrics.remembered(decided.results)
        return pb.RememberResponse(results=decided.results, sequence=sequence)

    async def search(self, request: pb.SearchRequest, ctx: Context) -> pb.SearchResponse:
        began = time.perf_counter()
        s = self.settings
        top_k = request.top_k or 10
        if top_k > s.max_top_k:
            raise InvalidArgument(violations=[
                ("top_k", f"must be 1 to {s.max_top_k} (0 means 10), got {request.top_k}")])
        if bool(request.text) == bool(request.vector):
            raise InvalidArgument("Search takes a text or a vector: exactly one of them")
        if not -1.0 <= request.min_score <= 1.0 or math.isnan(request.min_score):
            raise InvalidArgument(violations=[
                ("min_score", f"is a cosine similarity, -1 to 1; got {request.min_score}")])
        vector = self._vector(request.vector, "vector")
        if request.text:
            self._text(request.text, "text")
        test = predicate(request.filters)
        access = self._access(ctx)
        await self._after(request.after_sequence, ctx)
        index = self.replica.ready()
        scopes = access.resolve(request.scopes, self._known_scopes(index, access)
                                if not request.scopes else ())
        if vector is None:
            vector = (await self._embed([request.text], ctx))[0]
        hits, path = await self.replica.run(
            lambda: index.search(vector, top_k, scopes, predicate=test,
                                 min_score=request.min_score if request.min_score else -1.0))
        response = pb.SearchResponse(index=path, hits=[self._hit(hit) for hit in hits])
        self.metrics.searched("text" if request.text else "vector", path,
                              time.perf_counter() - began)
        return response

    def _hit(self, hit: SearchHit) -> pb.Hit:
        return pb.Hit(memory=self._memory(hit.row), score=hit.score)

    async def get(self, request: pb.GetRequest, ctx: Context) -> pb.GetResponse:
        if not request.ids:
            raise InvalidArgument("Get needs at least one id")
        if len(request.ids) > _MAX_IDS:
            raise InvalidArgument(f"Get takes at most {_MAX_IDS} ids, got {len(request.ids)}")
        await self._after(request.after_sequence, ctx)
        index, access, now = self.replica.ready(), self._access(ctx), int(time.time() * 1000)
        response = pb.GetResponse()
        for memory_id in request.ids:
            row = self._visible_row(index, memory_id, access, now)
            if row is None:
                response.missing.append(memory_id[:64])
            else:
                response.memories.append(self._memory(row))
        return response

    async def update(self, request: pb.UpdateRequest, ctx: Context) -> pb.UpdateResponse:
        s = self.settings
        new_text = self._text(request.text, "text") if request.HasField("text") else None
        vector = self._vector(request.vector, "vector")
        if vector is not None and new_text is None:
            raise InvalidArgument("vector is the new text's embedding: send text with it")
        metadata = metadata_dict(request.metadata, s.metadata_limit_bytes, "metadata")
        if request.HasField("ttl") and request.keep_forever:
            raise InvalidArgument("set ttl or keep_forever, not both")
        ttl_ms = _millis(request.ttl) if request.HasField("ttl") else 0
        if request.HasField("ttl") and ttl_ms <= 0:
            raise InvalidArgument("ttl must be more than 0")
        access = self._access(ctx)
        if new_text is not None and vector is None:
            vector = (await self._embed([new_text], ctx))[0]
        async with self._writes:
            index, now = self.replica.ready(), int(time.time() * 1000)
            row = self._visible_row(index, request.id, access, now)
            if row is None:
                raise NotFound(f"no memory {request.id[:64]!r} that you may see (unknown, "
                               "expired or forgotten)")
            held = index.vector(row.id)
            assert held is not None
            merged = metadata if request.replace_metadata else {**row.metadata, **metadata}
            if len(json.dumps(merged, separators=(",", ":")).encode()) > s.metadata_limit_bytes:
                raise InvalidArgument(f"the metadata would be over the limit of "
                                      f"{s.metadata_limit_bytes} bytes")
            expires = row.expires_ms
            if request.keep_forever:
                expires = 0
            elif ttl_ms:
                expires = now + ttl_ms
            updated = replace(row, metadata=merged, expires_ms=expires,
                              updated_ms=max(now, row.updated_ms + 1))
            if new_text is not None and vector is not None:
                updated = replace(updated, text=new_text, text_hash=text_hash(new_text))
                held = vector
            sequence = await self._write([(updated, held)], [])
        return pb.UpdateResponse(memory=self._memory(updated), sequence=sequence)

    async def forget(self, request: pb.ForgetRequest, ctx: Context) -> pb.ForgetResponse:
        if bool(request.ids) == bool(request.scopes):
            raise InvalidArgument("Forget takes ids, or scopes (with optional filters): "
                                  "exactly one of them")
        if request.ids and request.filters:
            raise InvalidArgument("filters go with scopes, not with ids")
        if len(request.ids) > _MAX_IDS:
            raise InvalidArgument(f"Forget takes at most {_MAX_IDS} ids, got "
                                  f"{len(request.ids)}")
        test = predicate(request.filters)
        access = self._access(ctx)
        scopes = access.resolve(request.scopes, ()) if request.scopes else []
        async with self._writes:
            index, now = self.replica.ready(), int(time.time() * 1000)
            if request.ids:
                ids = [r.id for i in dict.fromkeys(request.ids)
                       if (r := self._visible_row(index, i, access, now)) is not None]
            else:
                ids = await self.replica.run(lambda: [
                    r.id for r in index.rows(scopes) if test is None or test(r.metadata)])
            sequence = await self._write([], ids) if ids else 0
        return pb.ForgetResponse(forgotten=len(ids), sequence=sequence)

    async def list_memories(self, request: pb.ListMemoriesRequest,
                            ctx: Context) -> pb.ListMemoriesResponse:
        """A page of a scope's memories, oldest first (created, then id). The token holds
        the change the first page was read at; later pages wait for it on whichever node
        answers, so a memory there when paging began is never missed for a lagging node."""
        if not request.HasField("scope"):
            raise InvalidArgument(violations=[("scope", "is required: the scope to list")])
        access = self._access(ctx)
        scope = access.check(scope_key(request.scope, access.caller), "scope")
        test = predicate(request.filters)
        size = page_size(request.page_size)
        query = [scope, [c.SerializeToString(deterministic=True).hex()
                         for c in request.filters]]
        position = decode_page_token(request.page_token, query, (int, int, str))
        if position is None:
            await self._after(request.after_sequence, ctx)
            seen = self.feed.applied
        else:
            seen = int(position[0])
            await self._after(seen, ctx)
        index, now = self.replica.ready(), int(time.time() * 1000)
        after = None if position is None else (position[1], position[2])

        def pick() -> tuple[list[Row], Any]:
            rows = (r for r in index.rows([scope]) if not r.expired(now)
                    and (test is None or test(r.metadata)))
            return take_page(rows, lambda r: (r.created_ms, r.id), size, after)

        rows, last = await self.replica.run(pick)
        return pb.ListMemoriesResponse(
            memories=[self._memory(r) for r in rows],
            next_page_token=encode_page_token((seen, *last), query) if last else "")

    async def stats(self, request: pb.StatsRequest, ctx: Context) -> pb.StatsResponse:
        access = self._access(ctx)
        index = self.replica.index
        response = pb.StatsResponse(index=index.kind if index is not None else "loading",
                                    sequence=self.feed.applied, expired_purged=self.purged)
        if index is None:
            return response
        counts = index.scopes()
        scopes = access.resolve(request.scopes, [k for k in counts if access.allows(k)])
        for key in sorted(scopes):
            count = counts.get(key, 0)
            response.scopes.append(pb.ScopeStats(scope=scope_message(key), memories=count,
                                                 quota=self.settings.scope_quota))
            response.memories += count
        response.collection_memories = len(index)
        return response
