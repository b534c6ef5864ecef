"""The Parallel Mind tools: ``submit_task``, ``watch_task``, ``get_task`` and
``cancel_task`` (``TaskService``).

A task's payload and result are bytes on the mesh; here they are text (UTF-8). A result
that is not UTF-8 comes back as ``result_base64``. ``watch_task`` reads the task's
``Watch`` stream until the task finishes or its own timeout passes, and relays the task's
progress as MCP progress notifications when the client asked for them.
"""

from __future__ import annotations

import base64
from typing import Annotated

import grpc
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from mesh.mcp.access import MeshAccess
from revo_engine_parallel.v1 import tasks_pb2 as pb
from revo_engine_parallel.v1 import tasks_pb2_grpc

__all__ = ["TaskView", "register"]

TIMEOUT_S = 30.0
WATCH_MAX_S = 600.0
FINISHED = frozenset({pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED,
                      pb.TASK_STATE_DEAD_LETTERED})


class TaskView(BaseModel):
    id: str
    type: str = Field(description="the task type; for a method-call task, its method")
    state: str = Field(description="queued, running, succeeded, failed, cancelled or "
                       "dead_lettered")
    finished: bool = Field(description="the task reached a final state")
    attempts: int
    progress: float = Field(description="0 to 1, as the task last reported")
    progress_message: str
    result: str = Field(description="the result as text (succeeded tasks)")
    result_base64: str = Field(description="the result in base64 when it is not UTF-8 text")
    error_code: str = Field(description="a gRPC status name when an attempt failed")
    error_message: str
    dead_letter_reason: str
    deduplicated: bool = Field(description="submit found an earlier task with the same "
                               "idempotency key and returned it")


def view(task: pb.Task) -> TaskView:
    """A task as the tools return it."""
    work = task.spec.WhichOneof("work")
    kind = task.spec.typed.type if work == "typed" else task.spec.call.method
    try:
        text, raw = task.result.decode(), ""
    except UnicodeDecodeError:
        text, raw = "", base64.b64encode(task.result).decode()
    return TaskView(
        id=task.id, type=kind, state=pb.TaskState.Name(task.state)
        .removeprefix("TASK_STATE_").lower(), finished=task.state in FINISHED,
        attempts=task.attempts, progress=round(task.progress.fraction, 6),
        progress_message=task.progress.message, result=text, result_base64=raw,
        error_code=task.error.code, error_message=task.error.message,
        dead_letter_reason=task.dead_letter_reason, deduplicated=task.deduplicated)


def register(server: MCPServer, access: MeshAccess) -> None:
    """Add the task tools to ``server``."""
    tasks = tasks_pb2_grpc.TaskServiceStub(access.channel)

    async def get(task_id: str, ctx: Context) -> pb.Task:
        with access.errors():
            task: pb.Task = await tasks.Get(pb.GetRequest(id=task_id),
                                            metadata=access.metadata(ctx), timeout=TIMEOUT_S)
        return task

    async def submit_task(
        type: Annotated[str, Field(min_length=1, description="a task type the mesh offers: "
                                   "'noop' (answers its payload), 'sleep' (waits payload "
                                   "milliseconds), or one an installed plugin registers")],
        ctx: Context,
        payload: Annotated[str, Field(description="the task's input, as text")] = "",
        priority: Annotated[int, Field(ge=0, le=9, description="1 (lowest) to 9 (highest); "
                                       "0: the default, 5")] = 0,
        idempotency_key: Annotated[str, Field(max_length=256, description="submitting the "
                                              "same key again returns the first task")] = "",
        timeout_s: Annotated[float | None, Field(gt=0, description="per attempt; unset: the "
                                                 "service default")] = None,
        max_attempts: Annotated[int, Field(ge=0, le=100, description="attempts before the "
                                           "task is dead-lettered; 0: the service default")
                                ] = 0,
    ) -> TaskView:
        spec = pb.TaskSpec(typed=pb.TypedWork(type=type, payload=payload.encode()),
                           priority=priority, idempotency_key=idempotency_key,
                           max_attempts=max_attempts)
        if timeout_s is not None:
            spec.timeout.FromNanoseconds(round(timeout_s * 1e9))
        with access.errors():
            reply = await tasks.Submit(pb.SubmitRequest(tasks=[spec]),
                                       metadata=access.metadata(ctx), timeout=TIMEOUT_S)
        return view(reply.tasks[0])

    async def watch_task(
        task_id: Annotated[str, Field(min_length=1, description="the id submit_task "
                                      "returned")],
        ctx: Context,
        timeout_s: Annotated[float, Field(gt=0, le=WATCH_MAX_S, description="stop watching "
                                          "after this many seconds and return the task as it "
                                          "is then (finished false)")] = 60.0,
    ) -> TaskView:
        last: pb.Task | None = None
        reported = 0.0
        stream = tasks.Watch(pb.WatchRequest(id=task_id), metadata=access.metadata(ctx),
                             timeout=timeout_s)
        try:
            async for task in stream:
                last = task
                fraction = task.progress.fraction
                if fraction > reported:  # MCP progress may only grow
                    reported = fraction
                    await ctx.report_progress(fraction, 1.0, task.progress.message or None)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise access.tool_error(exc) from None
        if last is None:  # nothing arrived before the timeout
            return view(await get(task_id, ctx))
        if last.state in FINISHED and last.result_object:  # Watch leaves a large result
            return view(await get(task_id, ctx))
        return view(last)

    async def get_task(
        task_id: Annotated[str, Field(min_length=1, description="the task's id")],
        ctx: Context,
    ) -> TaskView:
        return view(await get(task_id, ctx))

    async def cancel_task(
        task_id: Annotated[str, Field(min_length=1, description="the task's id")],
        ctx: Context,
    ) -> TaskView:
        with access.errors():
            task = await tasks.Cancel(pb.CancelRequest(id=task_id),
                                      metadata=access.metadata(ctx), timeout=TIMEOUT_S)
        return view(task)

    server.add_tool(submit_task, title="Submit task", description=(
        "Queue a durable task on revo's Parallel Mind: it runs on any node, is retried if a "
        "worker dies, and ends succeeded, failed, cancelled or dead-lettered. Returns at "
        "once with the task's id; follow it with watch_task."),
        annotations=ToolAnnotations(destructive_hint=False))
    server.add_tool(watch_task, title="Watch task", description=(
        "Wait for a task to finish (or for timeout_s) and return it with its result or "
        "error; the task's progress is reported as it comes."),
        annotations=ToolAnnotations(read_only_hint=True))
    server.add_tool(get_task, title="Get task", description=(
        "A task's current state, progress, result or error, without waiting."),
        annotations=ToolAnnotations(read_only_hint=True))
    server.add_tool(cancel_task, title="Cancel task", description=(
        "Stop a queued or running task; a finished task is returned as it is."),
        annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
