"""Workflow definitions are checked whole at creation: every mistake named, with its field."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor

from mesh.errors import InvalidArgument
from revo_engine_echo.v1 import echo_pb2
from revo_engine_parallel.v1 import tasks_pb2
from revo_engine_workflows.definitions import TASK_SUBMIT, Definition, check
from revo_engine_workflows.v1 import workflows_pb2 as pb

ECHO = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
METHODS: dict[str, MethodDescriptor] = {
    "/revo.echo.v1.EchoService/Echo": ECHO.methods_by_name["Echo"],
    "/revo.echo.v1.EchoService/Count": ECHO.methods_by_name["Count"],
    TASK_SUBMIT: tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].methods_by_name["Submit"],
}


def _workflow(steps: list[dict[str, Any]], **fields: Any) -> pb.Workflow:
    return json_format.ParseDict({"name": "flow", "steps": steps, **fields}, pb.Workflow())


def _check(steps: list[dict[str, Any]], **fields: Any) -> Definition:
    return check(_workflow(steps, **fields), METHODS.get)


def _violations(steps: list[dict[str, Any]], **fields: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        _check(steps, **fields)
    return [(v.field, v.description) for v in caught.value.violations]


def _echo(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "call": {"method": "/revo.echo.v1.EchoService/Echo",
                                    "request": {"payload": "aGk="}}, **fields}


def test_a_good_workflow_is_ordered_by_what_each_step_needs_and_reads() -> None:
    definition = _check([
        _echo("last", needs=["first"]),
        {"id": "middle", "call": {"method": "/revo.echo.v1.EchoService/Count",
                                  "requestExpr": '{"count": size(steps.first.output.payload)}',
                                  "collectStream": True}},
        _echo("first"),
        {"id": "fan", "group": {"strategy": "STRATEGY_MAP", "items": "input.items",
                                "concurrency": 4,
                                "each": {"id": "one", "task": {"type": "noop",
                                                               "payloadExpr": "item"}}}},
    ], output="steps.last.output")
    assert definition.needs == {"last": {"first"}, "middle": {"first"}, "first": set(),
                                "fan": set()}
    assert definition.order.index("first") < definition.order.index("middle")
    assert definition.order.index("first") < definition.order.index("last")
    assert set(definition.steps) == {"last", "middle", "first", "fan", "one"}
    assert ("middle", "request") in definition.expressions
    assert ("", "output") in definition.expressions
    assert definition.methods == {"/revo.echo.v1.EchoService/Echo",
                                  "/revo.echo.v1.EchoService/Count", TASK_SUBMIT}


def test_a_cycle_is_named_step_by_step() -> None:
    [(where, what)] = _violations([
        _echo("a", needs=["c"]), _echo("b", needs=["a"]),
        {"id": "c", "call": {"method": "/revo.echo.v1.EchoService/Echo",
                             "requestExpr": '{"payload": steps.b.output.payload}'}}])
    assert where == "workflow.steps"
    assert what == "the steps form a cycle: a -> c -> b -> a"


def test_unknown_methods_and_requests_that_do_not_fit_are_refused() -> None:
    wrong = _violations([
        {"id": "a", "call": {"method": "/revo.echo.v1.EchoService/Shout"}},
        {"id": "b", "call": {"method": "revo.echo.v1.EchoService.Echo"}},
        {"id": "c", "call": {"method": "/revo.echo.v1.EchoService/Echo",
                             "request": {"payload": "aGk=", "delay": 3}}},
        {"id": "d", "call": {"method": "/revo.echo.v1.EchoService/Echo",
                             "collectStream": True}},
    ])
    fields = [w for w, _ in wrong]
    assert fields == ["workflow.steps[0].call.method", "workflow.steps[1].call.method",
                      "workflow.steps[2].call.request", "workflow.steps[3].call.collect_stream"]
    assert "no node serves /revo.echo.v1.EchoService/Shout" in wrong[0][1]
    assert "/package.Service/Method" in wrong[1][1]
    assert "does not fit revo.echo.v1.EchoRequest" in wrong[2][1]
    assert "'delay'" in wrong[2][1] or "delay" in wrong[2][1]


def test_expressions_that_do_not_compile_or_read_what_does_not_exist() -> None:
    wrong = _violations([
        _echo("a", when="input.ok =="),
        _echo("b", when="item > 1"),
        _echo("c", when="steps.nowhere.output != null"),
    ], output="steps.a.output +")
    assert [w for w, _ in wrong] == ["workflow.steps[0].when", "workflow.steps[1].when",
                                     "workflow.steps[2]", "workflow.output"]
    assert "does not parse as CEL" in wrong[0][1]
    assert "names 'item'" in wrong[1][1]
    assert "steps.nowhere" in wrong[2][1]


def test_ids_names_groups_and_fallbacks_are_checked() -> None:
    wrong = _violations([
        _echo("Bad-Id"),
        _echo("twice"), _echo("twice"),
        {"id": "nothing"},
        {"id": "empty", "group": {"strategy": "STRATEGY_ALL"}},
        {"id": "unset", "group": {"steps": [_echo("x")]}},
        {"id": "vote", "group": {"strategy": "STRATEGY_VOTE", "quorum": 3,
                                 "steps": [_echo("v1"), _echo("v2")]}},
        {"id": "map", "group": {"strategy": "STRATEGY_MAP"}},
        _echo("falls", onFailure="ON_FAILURE_FALLBACK", fallback="ghost"),
        _echo("stray", fallback="twice"),
        {"id": "nap", "sleep": {"duration": "0s"}},
    ], name="no spaces allowed")
    fields = [w for w, _ in wrong]
    assert "workflow.name" in fields
    assert "workflow.steps[0].id" in fields
    assert "workflow.steps[2].id" in fields
    assert "workflow.steps[3]" in fields
    assert "workflow.steps[4].group.steps" in fields
    assert "workflow.steps[5].group.strategy" in fields
    assert "workflow.steps[6].group.quorum" in fields
    assert "workflow.steps[7].group.items" in fields
    assert "workflow.steps[7].group.each" in fields
    assert "workflow.steps[8].fallback" in fields
    assert "workflow.steps[9].fallback" in fields
    assert "workflow.steps[10].sleep.duration" in fields


def test_a_fallback_step_runs_only_as_a_fallback() -> None:
    definition = _check([_echo("main", onFailure="ON_FAILURE_FALLBACK", fallback="spare"),
                         _echo("spare")])
    assert definition.fallbacks == {"spare"}
    assert definition.order == ["main"]


def test_task_steps_need_parallel_mind() -> None:
    with pytest.raises(InvalidArgument, match="enable the parallel engine"):
        check(_workflow([{"id": "t", "task": {"type": "noop"}}]), lambda path: None)


def test_a_method_task_names_a_unary_method_whose_request_fits() -> None:
    definition = _check([{"id": "t", "task": {
        "method": "/revo.echo.v1.EchoService/Echo", "request": {"payload": "aGk="},
        "requestExpr": '{"delayMs": 1}'}}])
    assert definition.methods == {"/revo.echo.v1.EchoService/Echo", TASK_SUBMIT}
    assert ("t", "request") in definition.expressions
    wrong = _violations([
        {"id": "both", "task": {"type": "noop", "method": "/revo.echo.v1.EchoService/Echo"}},
        {"id": "neither", "task": {"priority": 1}},
        {"id": "streams", "task": {"method": "/revo.echo.v1.EchoService/Count"}},
        {"id": "unfit", "task": {"method": "/revo.echo.v1.EchoService/Echo",
                                 "request": {"shout": True}}},
        {"id": "payload", "task": {"method": "/revo.echo.v1.EchoService/Echo",
                                   "payload": 1}},
        {"id": "typed", "task": {"type": "noop", "request": {"payload": "aGk="}}},
    ])
    assert [w for w, _ in wrong] == [
        "workflow.steps[0].task", "workflow.steps[1].task", "workflow.steps[2].task.method",
        "workflow.steps[3].task.request", "workflow.steps[4].task",
        "workflow.steps[5].task"]
    assert "exactly one of type" in wrong[0][1]
    assert "streams its answer" in wrong[2][1]
    assert "does not fit revo.echo.v1.EchoRequest" in wrong[3][1]
    assert "not payload" in wrong[4][1]
    assert "belong to method tasks" in wrong[5][1]


def test_the_built_in_solve_workflow_checks_against_the_engines_it_calls() -> None:
    from revo_engine_creative.v1 import creative_pb2
    from revo_engine_recall.v1 import recall_pb2
    from revo_engine_workflows.builtins import builtin

    creative = creative_pb2.DESCRIPTOR.services_by_name["CreativeService"]
    recall = recall_pb2.DESCRIPTOR.services_by_name["RecallService"]
    methods = {**METHODS,
               "/revo.recall.v1.RecallService/Search": recall.methods_by_name["Search"],
               **{f"/revo.creative.v1.CreativeService/{m}": creative.methods_by_name[m]
                  for m in ("GenerateSet", "Judge", "Choose")}}
    definition = check(builtin("solve"), methods.get)
    assert definition.order == ["recall", "alternatives", "evaluate", "remember"]
    assert definition.methods == set(methods) - {"/revo.echo.v1.EchoService/Echo",
                                                 "/revo.echo.v1.EchoService/Count"}
    with pytest.raises(InvalidArgument, match="CreativeService/Judge"):
        check(builtin("solve"), {k: v for k, v in methods.items()
                                 if not k.endswith("/Judge")}.get)


def test_a_vote_by_judge_names_a_unary_method_and_a_choice_over_its_reply() -> None:
    judge = {"method": "/revo.echo.v1.EchoService/Echo",
             "requestExpr": '{"payload": outputs[0].payload}',
             "choice": "output.payload == outputs[0].payload ? 0 : 1"}
    definition = _check([{"id": "v", "group": {"strategy": "STRATEGY_VOTE", "judge": judge,
                                               "steps": [_echo("a"), _echo("b")]}}])
    assert {("v", "judge_request"), ("v", "judge_choice")} <= set(definition.expressions)
    wrong = _violations([
        {"id": "both", "group": {"strategy": "STRATEGY_VOTE", "voteKey": "output",
                                 "judge": judge, "steps": [_echo("a")]}},
        {"id": "nochoice", "group": {"strategy": "STRATEGY_VOTE", "steps": [_echo("b")],
                                     "judge": {"method": "/revo.echo.v1.EchoService/Echo"}}},
        {"id": "streams", "group": {"strategy": "STRATEGY_VOTE", "steps": [_echo("c")],
                                    "judge": {"method": "/revo.echo.v1.EchoService/Count",
                                              "choice": "0"}}},
        {"id": "notvote", "group": {"strategy": "STRATEGY_ALL", "steps": [_echo("d")],
                                    "judge": judge}},
        {"id": "reads", "group": {"strategy": "STRATEGY_VOTE", "steps": [_echo("e")],
                                  "judge": {**judge, "choice": "item"}}},
    ])
    assert [w for w, _ in wrong] == [
        "workflow.steps[0].group.judge", "workflow.steps[1].group.judge.choice",
        "workflow.steps[2].group.judge.method", "workflow.steps[3].group",
        "workflow.steps[4].group.judge.choice"]
    assert "not both" in wrong[0][1]
    assert "a judge is a unary method" in wrong[2][1]
    assert "belong to vote groups only" in wrong[3][1]
