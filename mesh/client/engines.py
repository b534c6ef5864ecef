"""One facade per engine: plain Python arguments in, the contract's typed messages out.

Each facade binds its engine's generated stub (``revo_engine_<x>.v1``) to the client's
channel when first used, so the client needs only the engines it calls installed. A
failed call raises the mesh's error class (:mod:`mesh.errors`: ``NotFound``,
``RateLimited`` with ``retry_after``, ``BudgetExhausted``, ...); listings page through
every page (AIP-158 ``page_token``) as an async iterator; watches resume after the
gateway's maximum call time (:mod:`mesh.client.streams`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format, struct_pb2

from mesh.client.streams import read, resumed

if TYPE_CHECKING:
    from mesh.client.api import AsyncClient

__all__ = ["Creative", "Models", "Recall", "Tasks", "Workflows", "parse_scope"]

TaskState = int


def _contract(module: str, distribution: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed: pip install {distribution} "
                          f"(the engine's distribution carries its contract)") from exc


class _Facade:
    _module = ""
    _distribution = ""
    _stub_name = ""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        contract = _contract(self._module, self._distribution)
        self.pb = getattr(contract, next(n for n in contract.__all__ if n.endswith("_pb2")))
        grpc_module = getattr(contract, next(n for n in contract.__all__
                                             if n.endswith("_pb2_grpc")))
        self.stub = getattr(grpc_module, self._stub_name)(client.channel)

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        from mesh.client.connection import rpc_error

        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None

    def _read(self, call: Any, what: str) -> AsyncIterator[Any]:
        return read(call, self._client.stream_idle_timeout_s, what)

    async def _pages(self, method: Any, request: Any, field: str,
                     page_size: int) -> AsyncIterator[Any]:
        request.page_size = page_size
        while True:
            page = await self._call(method, request)
            for item in getattr(page, field):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token


def parse_scope(scope: str | Any, pb: Any) -> Any:
    """A Perfect Recall scope from text: ``user`` (the caller's own), ``user:NAME``,
    ``project:ID``, ``agent:ID`` / ``session:ID`` (the caller's), or ``agent:USER/ID``."""
    if not isinstance(scope, str):
        return scope
    kind, _, rest = scope.partition(":")
    kinds = {"user": pb.SCOPE_KIND_USER, "project": pb.SCOPE_KIND_PROJECT,
             "agent": pb.SCOPE_KIND_AGENT, "session": pb.SCOPE_KIND_SESSION}
    if kind not in kinds:
        raise ValueError(f"scope {scope!r}: start with one of {', '.join(kinds)} "
                         "(e.g. 'project:revo', 'user', 'agent:reviewer')")
    if kind == "user":
        return pb.Scope(kind=kinds[kind], user=rest)
    if kind == "project":
        return pb.Scope(kind=kinds[kind], id=rest)
    user, _, name = rest.rpartition("/")
    return pb.Scope(kind=kinds[kind], user=user, id=name)


def _struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if values is None:
        return None
    out = struct_pb2.Struct()
    out.update(dict(values))
    return out


def _value(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(value, out)
    return out


class Recall(_Facade):
    """Perfect Recall (``revo.recall.v1.RecallService``): long-term memory.

    Reads see this client's own writes: ``search``, ``get`` and ``memories`` pass the last
    write's sequence as ``after_sequence`` unless given one, so whichever node answers
    waits until it has applied that write."""

    _module, _distribution, _stub_name = ("revo_engine_recall.v1", "revo-engine-recall",
                                          "RecallServiceStub")
    written = 0
    """The sequence of this client's last write."""

    def _wrote(self, response: Any) -> Any:
        self.written = max(self.written, int(response.sequence))
        return response

    def _after(self, after_sequence: int | None) -> int:
        return self.written if after_sequence is None else after_sequence

    async def remember(self, text: str, *, scope: str | Any = "user",
                       metadata: Mapping[str, Any] | None = None, ttl_s: float | None = None,
                       client_id: str = "", vector: Sequence[float] = ()) -> Any:
        """Store one memory (embedded by the mesh, or by you: ``vector``); its
        ``Remembered`` (id, outcome: stored, duplicate or merged)."""
        memory = self.pb.MemoryInput(scope=parse_scope(scope, self.pb), text=text,
                                     metadata=_struct(metadata), client_id=client_id,
                                     vector=list(vector))
        if ttl_s is not None:
            memory.ttl.FromNanoseconds(int(ttl_s * 1e9))
        return (await self.remember_many([memory]))[0]

    async def remember_many(self, memories: Iterable[Any]) -> list[Any]:
        """Store ``MemoryInput`` messages in one call; one ``Remembered`` each, in order."""
        response = self._wrote(await self._call(
            self.stub.Remember, self.pb.RememberRequest(memories=list(memories))))
        return list(response.results)

    async def search(self, text: str = "", *, vector: Sequence[float] = (),
                     scopes: Sequence[str | Any] = (), top_k: int = 10,
                     min_score: float = 0.0, after_sequence: int | None = None) -> list[Any]:
        """The memories nearest ``text`` (or ``vector``) in ``scopes`` (none: every scope
        the caller may see): ``Hit``s (memory, score), best first."""
        request = self.pb.SearchRequest(text=text, vector=list(vector),
                                        scopes=[parse_scope(s, self.pb) for s in scopes],
                                        top_k=top_k, min_score=min_score,
                                        after_sequence=self._after(after_sequence))
        return list((await self._call(self.stub.Search, request)).hits)

    async def get(self, *ids: str, after_sequence: int | None = None) -> list[Any]:
        """The memories with ``ids`` that exist, in the order asked."""
        response = await self._call(self.stub.Get, self.pb.GetRequest(
            ids=list(ids), after_sequence=self._after(after_sequence)))
        return list(response.memories)

    async def forget(self, *ids: str) -> int:
        """Delete memories by id; how many were deleted."""
        response = self._wrote(await self._call(self.stub.Forget,
                                                self.pb.ForgetRequest(ids=list(ids))))
        return int(response.forgotten)

    def memories(self, scope: str | Any, *, page_size: int = 100,
                 after_sequence: int | None = None) -> AsyncIterator[Any]:
        """Every memory of ``scope``, oldest first, page by page (``ListMemories``)."""
        request = self.pb.ListMemoriesRequest(scope=parse_scope(scope, self.pb),
                                              after_sequence=self._after(after_sequence))
        return self._pages(self.stub.ListMemories, request, "memories", page_size)


class Tasks(_Facade):
    """Parallel Mind (``revo.tasks.v1.TaskService``): durable prioritized tasks."""

    _module, _distribution, _stub_name = ("revo_engine_parallel.v1", "revo-engine-parallel",
                                          "TaskServiceStub")

    def _finished(self, task: Any) -> bool:
        return task.state in (self.pb.TASK_STATE_SUCCEEDED, self.pb.TASK_STATE_FAILED,
                              self.pb.TASK_STATE_CANCELLED, self.pb.TASK_STATE_DEAD_LETTERED)

    async def submit(self, task_type: str, payload: bytes | str | Mapping[str, Any] = b"", *,
                     priority: int = 0, idempotency_key: str = "",
                     timeout_s: float | None = None, max_attempts: int = 0) -> Any:
        """Queue typed work (``payload``: bytes, text, or a dict sent as JSON); its ``Task``."""
        if isinstance(payload, Mapping):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        spec = self.pb.TaskSpec(typed=self.pb.TypedWork(type=task_type, payload=payload),
                                priority=priority, idempotency_key=idempotency_key,
                                max_attempts=max_attempts)
        if timeout_s is not None:
            spec.timeout.FromNanoseconds(int(timeout_s * 1e9))
        response = await self._call(self.stub.Submit, self.pb.SubmitRequest(tasks=[spec]))
        return response.tasks[0]

    async def get(self, task_id: str) -> Any:
        return await self._call(self.stub.Get, self.pb.GetRequest(id=task_id))

    async def cancel(self, task_id: str) -> Any:
        return await self._call(self.stub.Cancel, self.pb.CancelRequest(id=task_id))

    def watch(self, task_id: str) -> AsyncIterator[Any]:
        """The task at each change until it finishes; resumed when the gateway ends the
        stream (the record is sent again on reopening: a repeat is skipped)."""
        return self._watch(task_id)

    async def _watch(self, task_id: str) -> AsyncIterator[Any]:
        last = b""
        task: Any
        async for task in resumed(
                lambda: self.stub.Watch(self.pb.WatchRequest(id=task_id)),
                idle_timeout_s=None,  # a watch is quiet while nothing changes
                what=f"watching task {task_id}", finished=self._finished,
                on_resume=self._client._resumed):
            seen = task.SerializeToString(deterministic=True)
            if seen != last:
                last = seen
                yield task

    async def wait(self, task_id: str) -> Any:
        """The task once finished (succeeded, failed, cancelled or dead-lettered)."""
        last = None
        async for task in self.watch(task_id):
            last = task
        if last is None or not self._finished(last):
            last = await self.get(task_id)
        return last

    def list(self, *, state: TaskState = 0, owner: str = "",
             page_size: int = 100) -> AsyncIterator[Any]:
        """Tasks (the caller's, or ``owner``'s), newest first, page by page."""
        return self._pages(self.stub.List, self.pb.ListRequest(state=state, owner=owner),
                           "tasks", page_size)

    async def stats(self) -> Any:
        return await self._call(self.stub.Stats, self.pb.StatsRequest())


class Models(_Facade):
    """The model router (``revo.models.v1.ModelService``): local first, then paid."""

    _module, _distribution, _stub_name = ("mesh.v1", "revo-mesh", "ModelServiceStub")

    def __init__(self, client: AsyncClient) -> None:
        from mesh.v1 import models_pb2, models_pb2_grpc

        self._client = client
        self.pb = models_pb2
        self.stub = models_pb2_grpc.ModelServiceStub(client.channel)

    def _request(self, prompt: str | Sequence[Mapping[str, str]], model: str,
                 max_tokens: int, temperature: float | None, force_local: bool,
                 cost_limit_usd: float) -> Any:
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else list(prompt))
        request = self.pb.GenerateRequest(
            messages=[self.pb.Message(role=m["role"], content=m["content"]) for m in messages],
            policy=self.pb.Policy(model=model, force_local=force_local,
                                  cost_limit_usd=cost_limit_usd))
        if max_tokens:
            request.sampling.max_tokens = max_tokens
        if temperature is not None:
            request.sampling.temperature = temperature
        return request

    def stream(self, prompt: str | Sequence[Mapping[str, str]], *, model: str = "",
               max_tokens: int = 0, temperature: float | None = None,
               force_local: bool = False, cost_limit_usd: float = 0.0) -> AsyncIterator[Any]:
        """``GenerateResponse`` events: text deltas, then ``done`` (model, usage, cost)."""
        request = self._request(prompt, model, max_tokens, temperature, force_local,
                                cost_limit_usd)
        return self._read(self.stub.Generate(request), "Generate")

    async def generate(self, prompt: str | Sequence[Mapping[str, str]], *, model: str = "",
                       max_tokens: int = 0, temperature: float | None = None,
                       force_local: bool = False,
                       cost_limit_usd: float = 0.0) -> tuple[str, Any]:
        """The whole answer's text, and the stream's ``Done`` (model, usage, cost)."""
        parts, done = [], None
        async for event in self.stream(prompt, model=model, max_tokens=max_tokens,
                                       temperature=temperature, force_local=force_local,
                                       cost_limit_usd=cost_limit_usd):
            kind = event.WhichOneof("event")
            if kind == "delta":
                parts.append(event.delta)
            elif kind == "done":
                done = event.done
        return "".join(parts), done

    async def embed(self, texts: Sequence[str], *, model: str = "") -> list[list[float]]:
        response = await self._call(self.stub.Embed,
                                    self.pb.EmbedRequest(texts=list(texts), model=model))
        return [list(e.values) for e in response.embeddings]

    async def list(self) -> list[Any]:
        return list((await self._call(self.stub.ListModels,
                                      self.pb.ListModelsRequest())).models)

    async def usage(self, **fields: Any) -> Any:
        """``GetUsage`` with its request's fields as keywords (e.g. ``user=``)."""
        return await self._call(self.stub.GetUsage, self.pb.GetUsageRequest(**fields))


class Creative(_Facade):
    """Creative (``revo.creative.v1.CreativeService``): 3 to 8 different solutions."""

    _module, _distribution, _stub_name = ("revo_engine_creative.v1", "revo-engine-creative",
                                          "CreativeServiceStub")

    def _request(self, cls: Any, problem: str, n: int, constraints: Sequence[str],
                 context: str, options: Mapping[str, Any] | None) -> Any:
        request = cls(problem=problem, n=n, constraints=list(constraints), context=context)
        if options:
            json_format.ParseDict(dict(options), request.options)
        return request

    async def generate(self, problem: str, *, n: int = 0, constraints: Sequence[str] = (),
                       context: str = "", options: Mapping[str, Any] | None = None) -> Any:
        """A scored set of solutions: ``GenerateSetResponse`` (candidates, summary)."""
        request = self._request(self.pb.GenerateSetRequest, problem, n, constraints, context,
                                options)
        return await self._call(self.stub.GenerateSet, request)

    def stream(self, problem: str, *, n: int = 0, constraints: Sequence[str] = (),
               context: str = "", options: Mapping[str, Any] | None = None
               ) -> AsyncIterator[Any]:
        """Candidates as each is ready, then the summary."""
        request = self._request(self.pb.GenerateRequest, problem, n, constraints, context,
                                options)
        return self._read(self.stub.Generate(request), "Creative.Generate")

    async def strategies(self) -> Any:
        return await self._call(self.stub.ListStrategies, self.pb.ListStrategiesRequest())


class Workflows(_Facade):
    """The Coordinator (``revo.workflows.v1.WorkflowService``): durable workflows."""

    _module, _distribution, _stub_name = ("revo_engine_workflows.v1", "revo-engine-workflows",
                                          "WorkflowServiceStub")

    async def create(self, definition: Mapping[str, Any] | Any) -> Any:
        """Create or replace a workflow from its definition (a dict as in the docs'
        JSON/YAML, or a ``Workflow``)."""
        workflow = definition if not isinstance(definition, Mapping) else json_format.ParseDict(
            dict(definition), self.pb.Workflow())
        response: Any = await self._call(self.stub.CreateWorkflow,
                                    self.pb.CreateWorkflowRequest(workflow=workflow))
        return response.workflow

    async def start(self, workflow: str, input: Any = None, *,
                    idempotency_key: str = "") -> Any:
        """Start a run (or, with a key already used, return that run); its ``Run``."""
        request = self.pb.StartRunRequest(workflow=workflow, idempotency_key=idempotency_key)
        if input is not None:
            request.input.CopyFrom(_value(input))
        return (await self._call(self.stub.StartRun, request)).run

    async def get(self, run_id: str) -> Any:
        return (await self._call(self.stub.GetRun, self.pb.GetRunRequest(run_id=run_id))).run

    async def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        request = self.pb.SignalRequest(run_id=run_id, name=name)
        if payload is not None:
            request.payload.CopyFrom(_value(payload))
        await self._call(self.stub.Signal, request)

    async def cancel(self, run_id: str) -> Any:
        return (await self._call(self.stub.CancelRun,
                                 self.pb.CancelRunRequest(run_id=run_id))).run

    def watch(self, run_id: str, *, after_sequence: int = 0) -> AsyncIterator[Any]:
        """The run's events (``RunEvent``) until it finishes, from ``after_sequence``;
        resumed after the last event seen when the gateway ends the stream."""
        return self._watch(run_id, after_sequence)

    async def _watch(self, run_id: str, after: int) -> AsyncIterator[Any]:
        position = [after]

        def reopen() -> Any:
            return self.stub.WatchRun(self.pb.WatchRunRequest(run_id=run_id,
                                                              after_sequence=position[0]))

        response: Any
        async for response in resumed(
                reopen, idle_timeout_s=None,  # quiet while a step works
                what=f"watching run {run_id}",
                finished=lambda r: r.event.WhichOneof("event") == "run_finished",
                on_resume=self._client._resumed):
            position[0] = response.event.sequence
            yield response.event

    async def wait(self, run_id: str) -> Any:
        """The run once finished."""
        async for _ in self.watch(run_id):
            pass
        return await self.get(run_id)

    def runs(self, *, workflow: str = "", state: int = 0,
             page_size: int = 100) -> AsyncIterator[Any]:
        """Runs, page by page."""
        return self._pages(self.stub.ListRuns,
                           self.pb.ListRunsRequest(workflow=workflow, state=state),
                           "runs", page_size)

