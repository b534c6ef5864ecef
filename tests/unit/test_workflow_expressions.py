"""Workflow expressions: CEL compiled once, the variables and steps it reads, JSON in and out."""

from __future__ import annotations

import pytest

from revo_engine_workflows.expressions import ExpressionError, compile_expression

STEPS = {"recall": {"output": {"hits": [{"memory": {"text": "Postgres 16"}}]}},
         "gen": {"output": [1, 2, 3]}}


def test_a_request_map_reads_the_input_and_earlier_steps() -> None:
    expression = compile_expression(
        '{"text": steps.recall.output.hits[0].memory.text, "n": size(steps["gen"].output),'
        ' "q": input.q, "literal": "steps.not_a_step"}')
    assert expression.roots == {"input", "steps"}
    assert expression.steps == {"recall", "gen"}, "string literals are not references"
    assert expression.evaluate({"input": {"q": 1.5}, "steps": STEPS}) == {
        "text": "Postgres 16", "n": 3, "q": 1.5, "literal": "steps.not_a_step"}


def test_macro_variables_are_not_unknown_names() -> None:
    expression = compile_expression("input.xs.filter(x, x > 1).map(y, y * 2)")
    assert expression.roots == {"input"}
    assert expression.evaluate({"input": {"xs": [1, 2, 3]}}) == [4, 6]


@pytest.mark.parametrize(("source", "says"), [
    ("1 +", "does not parse as CEL"),
    ("nope + 1", "names 'nope'"),
    ("x" * 5000, "over the limit"),
])
def test_a_bad_expression_is_refused_at_compile_time(source: str, says: str) -> None:
    with pytest.raises(ExpressionError, match=says):
        compile_expression(source)


def test_the_variables_allowed_depend_on_where_the_expression_is() -> None:
    with pytest.raises(ExpressionError, match="may read input, steps"):
        compile_expression("item + 1", allowed={"input", "steps"})
    assert compile_expression("item + index", allowed={"item", "index"}).evaluate(
        {"item": 2, "index": 1}) == 3


@pytest.mark.parametrize(("source", "says"), [
    ("steps.gen.output.x", "no such member"),
    ("1 / 0", "divide by zero"),
    ("missing_at_run_time", "'missing_at_run_time' is not defined here"),
])
def test_a_failing_evaluation_says_why(source: str, says: str) -> None:
    expression = compile_expression(source, allowed={"steps", "missing_at_run_time"})
    with pytest.raises(ExpressionError, match=says):
        expression.evaluate({"steps": {"gen": {"output": {}}}})


def test_values_come_back_as_json() -> None:
    value = compile_expression(
        '[true, 1u, 2.5, b"x", null, timestamp("2026-01-01T00:00:00Z") + duration("90s"),'
        ' duration("1.5s"), {"k": [1]}]').evaluate({})
    assert value == [True, 1, 2.5, "x", None, "2026-01-01T00:01:30Z", 1.5, {"k": [1]}]


def test_join_concatenates_a_list_of_strings_as_cel_strings_extension_does() -> None:
    hits = {"steps": {"recall": {"output": {"hits": [{"memory": {"text": "a"}},
                                                     {"memory": {"text": "b"}}]}}}}
    joined = compile_expression('steps.recall.output.hits.map(h, h.memory.text).join("\\n")')
    assert joined.evaluate(hits) == "a\nb"
    assert compile_expression('["x", "y"].join()').evaluate({}) == "xy"
    assert compile_expression("[].join(',')").evaluate({}) == ""
    with pytest.raises(ExpressionError):
        compile_expression("[1, 2].join()").evaluate({})
