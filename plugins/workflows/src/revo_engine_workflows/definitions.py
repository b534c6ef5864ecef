"""Checking a workflow definition before it is stored: :func:`check`.

Every mistake a definition can hold is found at creation, each with the field it is in and
what would be right, so that no run fails later for a reason the definition already showed:

- names and ids that do not fit their patterns, ids used twice, steps with no kind;
- a ``needs`` or an expression that names a step that does not exist, and cycles among
  the steps (a step needs the steps it lists *and* those its expressions read);
- calls to methods no node serves (checked against the registry), client-streaming
  methods, and constant requests that do not fit the method's input message;
- expressions that do not compile, or read a variable that does not exist where they are;
- groups without branches or items, votes whose quorum cannot be reached, fallbacks that
  do not exist, sleeps and timeouts out of range.

The result, :class:`Definition`, has every expression compiled and the steps in an order
that respects their dependencies, for the engine that runs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import MethodDescriptor

from mesh.errors import InvalidArgument
from revo_engine_workflows.expressions import Expression, ExpressionError, compile_expression
from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["TASK_SUBMIT", "Definition", "MethodLookup", "check", "walk"]

MethodLookup = Callable[[str], MethodDescriptor | None]
"""The descriptor of the method a path names, from the registry; None when no node
serves it."""

TASK_SUBMIT = "/revo.tasks.v1.TaskService/Submit"
"""What a task step calls (Parallel Mind)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STEP_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SIGNAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_METHOD = re.compile(r"^/([A-Za-z_][\w.]*)/([A-Za-z_]\w*)$")
MAX_STEPS = 500
MAX_SLEEP_S = 366 * 86_400.0
MAX_TIMEOUT_S = 7 * 86_400.0
MAX_ATTEMPTS = 100
MAX_CONCURRENCY = 1000

_RUN_ROOTS = frozenset({"input", "steps", "run"})
_MAP_ROOTS = _RUN_ROOTS | {"item", "index"}


@dataclass
class Definition:
    """A checked workflow: its steps by id, compiled expressions, and an order to run in."""

    workflow: pb.Workflow
    steps: dict[str, pb.Step] = field(default_factory=dict)
    """Every step by id, group branches and map templates included."""
    expressions: dict[tuple[str, str], Expression] = field(default_factory=dict)
    """(step id, field) -> compiled expression; ("", "output") for the run's output."""
    needs: dict[str, frozenset[str]] = field(default_factory=dict)
    """Top-level step id -> the top-level steps it waits for."""
    order: list[str] = field(default_factory=list)
    """Top-level steps (fallbacks left out), each after every step it needs."""
    fallbacks: frozenset[str] = frozenset()
    """Steps that run only in place of a failed step."""
    methods: frozenset[str] = frozenset()
    """Every method a run of it may call (for the permission check at start)."""


def walk(steps: Iterable[pb.Step]) -> Iterator[tuple[pb.Step, str]]:
    """Every step with its field path, groups' branches and templates included."""
    for i, step in enumerate(steps):
        yield from _walk(step, f"steps[{i}]")


def _walk(step: pb.Step, where: str) -> Iterator[tuple[pb.Step, str]]:
    yield step, where
    if step.WhichOneof("kind") == "group":
        for j, branch in enumerate(step.group.steps):
            yield from _walk(branch, f"{where}.group.steps[{j}]")
        if step.group.HasField("each"):
            yield from _walk(step.group.each, f"{where}.group.each")


class _Checker:
    def __init__(self, workflow: pb.Workflow, lookup: MethodLookup) -> None:
        self.workflow = workflow
        self.lookup = lookup
        self.wrong: list[tuple[str, str]] = []
        self.definition = Definition(workflow)
        self.methods: set[str] = set()

    def fail(self, where: str, what: str) -> None:
        self.wrong.append((where, what))

    def compile(self, step_id: str, name: str, source: str, where: str,
                allowed: frozenset[str]) -> Expression | None:
        if not source:
            return None
        try:
            expression = compile_expression(source, allowed)
        except ExpressionError as error:
            self.fail(where, str(error))
            return None
        self.definition.expressions[step_id, name] = expression
        return expression

    def run(self) -> Definition:
        workflow = self.workflow
        if not _NAME.match(workflow.name):
            self.fail("workflow.name", "must be 1 to 64 letters, digits, '.', '_' or '-', "
                                       f"starting with a letter or digit; got "
                                       f"{workflow.name[:70]!r}")
        if not workflow.steps:
            self.fail("workflow.steps", "is empty: a workflow needs at least one step")
        everything = list(walk(workflow.steps))
        if len(everything) > MAX_STEPS:
            self.fail("workflow.steps", f"has {len(everything)} steps, at most {MAX_STEPS}")
            raise InvalidArgument(violations=self.wrong)
        top = {s.id for s in workflow.steps}
        for step, where in everything:
            if not _STEP_ID.match(step.id):
                self.fail(f"workflow.{where}.id", "must be a lowercase letter, then lowercase "
                                                  f"letters, digits or '_' (at most 64); got "
                                                  f"{step.id[:70]!r}")
            elif step.id in self.definition.steps:
                self.fail(f"workflow.{where}.id", f"{step.id!r} is used by another step")
            else:
                self.definition.steps[step.id] = step
        for index, step in enumerate(workflow.steps):
            self.step(step, f"workflow.steps[{index}]", top, inside_map=False)
        self.fallbacks(top)
        if workflow.output:
            self.compile("", "output", workflow.output, "workflow.output",
                         frozenset({"input", "steps", "run"}))
        output = self.definition.expressions.get(("", "output"))
        if output is not None:
            for name in sorted(output.steps - top):
                self.fail("workflow.output", f"reads steps.{name}, which is not a top-level "
                                             "step")
        self.order(top)
        if self.wrong:
            raise InvalidArgument(violations=self.wrong)
        self.definition.methods = frozenset(self.methods)
        return self.definition

    def step(self, step: pb.Step, where: str, top: set[str], inside_map: bool) -> None:
        kind = step.WhichOneof("kind")
        allowed = _MAP_ROOTS if inside_map else _RUN_ROOTS
        for need in step.needs:
            if need not in top:
                self.fail(f"{where}.needs", f"names {need[:70]!r}, which is not a top-level "
                                            f"step of this workflow")
        self.compile(step.id, "when", step.when, f"{where}.when", allowed)
        if step.HasField("timeout"):
            seconds = step.timeout.ToNanoseconds() / 1e9
            if not 0 < seconds <= MAX_TIMEOUT_S:
                self.fail(f"{where}.timeout", f"must be more than 0 and at most "
                                              f"{MAX_TIMEOUT_S:g} s, got {seconds:g} s")
        if step.retry.max_attempts > MAX_ATTEMPTS:
            self.fail(f"{where}.retry.max_attempts", f"must be at most {MAX_ATTEMPTS}")
        if kind is None:
            self.fail(where, "has no kind: set one of call, task, group, sleep, wait_signal")
        elif kind == "call":
            self.call(step, f"{where}.call", allowed)
        elif kind == "task":
            self.task(step, f"{where}.task", allowed)
        elif kind == "group":
            self.group(step, f"{where}.group", top, inside_map)
        elif kind == "sleep":
            seconds = step.sleep.duration.ToNanoseconds() / 1e9
            if not 0 < seconds <= MAX_SLEEP_S:
                self.fail(f"{where}.sleep.duration", f"must be more than 0 and at most "
                                                     f"{MAX_SLEEP_S:g} s, got {seconds:g} s")
        elif kind == "wait_signal" and not _SIGNAL.match(step.wait_signal.name):
            self.fail(f"{where}.wait_signal.name", "must be 1 to 64 letters, digits, '.', "
                                                   "'_' or '-'")
        for (step_id, _), expression in list(self.definition.expressions.items()):
            if step_id == step.id:
                for name in sorted(expression.steps - top):
                    self.fail(where, f"an expression reads steps.{name}, which is not a "
                                     "top-level step of this workflow")

    def call(self, step: pb.Step, where: str, allowed: frozenset[str]) -> None:
        call = step.call
        self.compile(step.id, "request", call.request_expr, f"{where}.request_expr", allowed)
        method = self.method(call.method, call.request, where)
        if method is not None and call.collect_stream and not method.server_streaming:
            self.fail(f"{where}.collect_stream", f"{call.method} is unary: there is no "
                                                 "stream to collect")

    def method(self, path: str, request: struct_pb2.Struct, where: str
               ) -> MethodDescriptor | None:
        """The method a step calls, checked: it exists, and ``request`` fits its input."""
        if not _METHOD.match(path):
            self.fail(f"{where}.method", f"must be a gRPC path /package.Service/Method, got "
                                         f"{path[:100]!r}")
            return None
        method = self.lookup(path)
        if method is None:
            self.fail(f"{where}.method", f"no node serves {path} (check the name, "
                                         "and that its engine runs; WorkflowService lists "
                                         "only what the registry knows now)")
            return None
        if method.client_streaming:
            self.fail(f"{where}.method", f"{path} is client-streaming, which the "
                                         "mesh does not support")
            return None
        self.methods.add(path)
        message = message_factory.GetMessageClass(method.input_type)()
        try:
            json_format.ParseDict(json_format.MessageToDict(request), message)
        except json_format.ParseError as error:
            self.fail(f"{where}.request", f"does not fit {method.input_type.full_name}: "
                                          f"{str(error)[:300]}")
        return method

    def task(self, step: pb.Step, where: str, allowed: frozenset[str]) -> None:
        task = step.task
        if bool(task.type) == bool(task.method):
            self.fail(where, "set exactly one of type (a task type a plugin registers) and "
                             "method (a unary mesh method a worker calls)")
        if task.method:
            if task.payload_expr or task.HasField("payload"):
                self.fail(where, "a method task takes request and request_expr, not payload")
            self.compile(step.id, "request", task.request_expr, f"{where}.request_expr",
                         allowed)
            method = self.method(task.method, task.request, where)
            if method is not None and method.server_streaming:
                self.fail(f"{where}.method", f"{task.method} streams its answer; a task "
                                             "calls unary methods only (use a call step)")
        elif task.request_expr or task.HasField("request"):
            self.fail(where, "request and request_expr belong to method tasks; a typed task "
                             "takes payload")
        if task.priority > 9:
            self.fail(f"{where}.priority", "must be 0 (default) to 9")
        self.compile(step.id, "payload", task.payload_expr, f"{where}.payload_expr",
                     allowed)
        if self.lookup(TASK_SUBMIT) is None:
            self.fail(where, "no node serves revo.tasks.v1.TaskService (Parallel Mind), "
                             "which runs task steps: enable the parallel engine")
        self.methods.add(TASK_SUBMIT)

    def group(self, step: pb.Step, where: str, top: set[str], inside_map: bool) -> None:
        group = step.group
        strategy = group.strategy
        if strategy == pb.STRATEGY_UNSPECIFIED:
            self.fail(f"{where}.strategy", "is unset: choose all, race, vote or map")
            return
        if strategy == pb.STRATEGY_MAP:
            if not group.items:
                self.fail(f"{where}.items", "is empty: a map group needs a CEL list to map")
            self.compile(step.id, "items", group.items, f"{where}.items",
                         _MAP_ROOTS - {"item", "index"} if not inside_map else _MAP_ROOTS)
            if not group.HasField("each"):
                self.fail(f"{where}.each", "is unset: a map group runs its `each` step per "
                                           "item")
            else:
                self.step(group.each, f"{where}.each", top, inside_map=True)
            if group.steps:
                self.fail(f"{where}.steps", "a map group has `each`, not steps")
            if group.concurrency > MAX_CONCURRENCY:
                self.fail(f"{where}.concurrency", f"must be at most {MAX_CONCURRENCY}")
            return
        if group.HasField("each") or group.items:
            self.fail(where, "`items` and `each` belong to map groups only")
        if not group.steps:
            self.fail(f"{where}.steps", "is empty: the group needs branches")
        for j, branch in enumerate(group.steps):
            self.step(branch, f"{where}.steps[{j}]", top, inside_map)
        if strategy == pb.STRATEGY_VOTE:
            self.compile(step.id, "vote_key", group.vote_key, f"{where}.vote_key",
                         frozenset({"output", "input", "run"}))
            if group.quorum > len(group.steps):
                self.fail(f"{where}.quorum", f"is {group.quorum}, more than the "
                                             f"{len(group.steps)} branches can reach")
            if group.HasField("judge"):
                self.judge(step, f"{where}.judge", inside_map)
        elif group.vote_key or group.quorum or group.HasField("judge"):
            self.fail(where, "`vote_key`, `quorum` and `judge` belong to vote groups only")

    def judge(self, step: pb.Step, where: str, inside_map: bool) -> None:
        judge = step.group.judge
        if step.group.vote_key or step.group.quorum:
            self.fail(where, "a vote has a judge or a vote_key and quorum, not both")
        roots = (_MAP_ROOTS if inside_map else _RUN_ROOTS) | {"outputs"}
        self.compile(step.id, "judge_request", judge.request_expr,
                     f"{where}.request_expr", roots)
        if not judge.choice:
            self.fail(f"{where}.choice", "is empty: a CEL expression over output (the "
                                         "judge's reply) giving the chosen index")
        self.compile(step.id, "judge_choice", judge.choice, f"{where}.choice",
                     frozenset({"output", "outputs", "input", "run"}))
        method = self.method(judge.method, judge.request, where)
        if method is not None and method.server_streaming:
            self.fail(f"{where}.method", f"{judge.method} streams its answer; a judge is "
                                         "a unary method")

    def fallbacks(self, top: set[str]) -> None:
        used = set()
        for step, where in walk(self.workflow.steps):
            if step.on_failure == pb.ON_FAILURE_FALLBACK:
                if step.fallback not in top:
                    self.fail(f"workflow.{where}.fallback",
                              f"names {step.fallback[:70]!r}, which is not a top-level step")
                elif step.fallback == step.id:
                    self.fail(f"workflow.{where}.fallback", "a step cannot be its own "
                                                            "fallback")
                else:
                    used.add(step.fallback)
            elif step.fallback:
                self.fail(f"workflow.{where}.fallback", "is set, but on_failure is not "
                                                        "ON_FAILURE_FALLBACK")
        self.definition.fallbacks = frozenset(used)

    def order(self, top: set[str]) -> None:
        """Each top-level step's dependencies (listed and read), and a topological order;
        a cycle is reported with its steps."""
        needs: dict[str, set[str]] = {}
        for step in self.workflow.steps:
            if step.id not in top:
                continue
            wanted = set(step.needs)
            for node, _ in _walk(step, ""):
                for (step_id, _name), expression in self.definition.expressions.items():
                    if step_id == node.id:
                        wanted |= expression.steps & top
            wanted.discard(step.id)
            needs[step.id] = wanted
        self.definition.needs = {k: frozenset(v) for k, v in needs.items()}
        done: list[str] = []
        left = dict(needs)
        while left:
            ready = sorted(s for s, wanted in left.items() if not wanted - set(done))
            if not ready:
                self.fail("workflow.steps", "the steps form a cycle: "
                          + " -> ".join(_cycle(left)))
                return
            done.extend(ready)
            for s in ready:
                del left[s]
        self.definition.order = [s for s in done if s not in self.definition.fallbacks]


def _cycle(needs: dict[str, set[str]]) -> list[str]:
    """One cycle among ``needs`` (every node in it has an unmet need), as a path."""
    start = min(needs)
    path, seen = [start], {start: 0}
    node = start
    while True:
        node = min(n for n in needs[node] if n in needs)
        if node in seen:
            return [*path[seen[node]:], node]
        seen[node] = len(path)
        path.append(node)


def check(workflow: pb.Workflow, lookup: MethodLookup) -> Definition:
    """``workflow`` checked (module docstring); ``INVALID_ARGUMENT`` with one violation per
    mistake otherwise."""
    return _Checker(workflow, lookup).run()
