"""Metadata filters: checked conditions, evaluated in process on each candidate's metadata.

A filter never becomes text in a Milvus expression: keys must be identifiers and values
plain strings, numbers or bools, checked here, and the index applies them as a Python
predicate. The only expressions the engine sends Milvus are its own, over ids it made.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from mesh.errors import InvalidArgument
from revo_engine_recall.v1 import recall_pb2 as pb

__all__ = ["Predicate", "metadata_dict", "predicate"]

Predicate = Callable[[dict[str, Any]], bool]
Scalar = str | float | bool

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_UNSAFE = re.compile(r"[\"'\\\x00-\x1f\x7f]")
_ORDER = {pb.OPERATOR_LESS, pb.OPERATOR_LESS_EQUAL, pb.OPERATOR_GREATER,
          pb.OPERATOR_GREATER_EQUAL}


def metadata_dict(metadata: struct_pb2.Struct, limit_bytes: int, where: str) -> dict[str, Any]:
    """A memory's metadata as a dict, or InvalidArgument (bad keys, too large)."""
    value: dict[str, Any] = json_format.MessageToDict(metadata)
    for key in value:
        if not _KEY.fullmatch(key):
            raise InvalidArgument(f"{where}: metadata key {key[:80]!r} must be a letter or _ "
                                  "then letters, digits or _, at most 64")
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit_bytes:
        raise InvalidArgument(f"{where}: metadata of {size} bytes (as JSON) is over the "
                              f"limit of {limit_bytes} bytes")
    return value


def _scalar(value: struct_pb2.Value, where: str) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if _UNSAFE.search(text) or len(text) > 1024:
            raise InvalidArgument(f"{where}: a filter string may not hold quotes, "
                                  "backslashes or control characters, nor be over 1024 "
                                  f"characters; got {text[:80]!r}")
        return text
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(f"{where}: a filter number must be finite")
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    raise InvalidArgument(f"{where}: a filter value must be a string, number or bool, "
                          f"not {kind or 'unset'}")


def _same(a: Any, b: Scalar) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return type(a) is type(b) and a == b
    if isinstance(b, float):
        return isinstance(a, int | float) and float(a) == b
    return isinstance(a, str) and a == b


def _test(condition: pb.Condition, where: str) -> Callable[[dict[str, Any]], bool]:
    key, op = condition.key, condition.op
    if not _KEY.fullmatch(key):
        raise InvalidArgument(f"{where}: filter key {key[:80]!r} must be a letter or _ then "
                              "letters, digits or _, at most 64")
    if op not in pb.Operator.values():
        raise InvalidArgument(f"{where}: unknown operator {op}")
    if op == pb.OPERATOR_EXISTS:
        return lambda m: key in m
    if op in (pb.OPERATOR_IN, pb.OPERATOR_NOT_IN):
        if not condition.values or condition.HasField("value"):
            raise InvalidArgument(f"{where}: {pb.Operator.Name(op)} takes values (1 to 100), "
                                  "not value")
        if len(condition.values) > 100:
            raise InvalidArgument(f"{where}: at most 100 values")
        options = [_scalar(v, f"{where}.values[{i}]") for i, v in enumerate(condition.values)]
        inside = op == pb.OPERATOR_IN
        return lambda m: (key in m and any(_same(m[key], o) for o in options)) == inside
    if not condition.HasField("value") or condition.values:
        raise InvalidArgument(f"{where}: {pb.Operator.Name(op)} takes one value")
    wanted = _scalar(condition.value, f"{where}.value")
    if op == pb.OPERATOR_UNSPECIFIED:
        return lambda m: key in m and _same(m[key], wanted)
    if op == pb.OPERATOR_NOT_EQUAL:
        return lambda m: not (key in m and _same(m[key], wanted))
    if isinstance(wanted, bool):
        raise InvalidArgument(f"{where}: {pb.Operator.Name(op)} compares numbers or strings")
    compare: Callable[[Any, Any], bool] = {
        pb.OPERATOR_LESS: lambda a, b: a < b, pb.OPERATOR_LESS_EQUAL: lambda a, b: a <= b,
        pb.OPERATOR_GREATER: lambda a, b: a > b,
        pb.OPERATOR_GREATER_EQUAL: lambda a, b: a >= b}[op]
    number = isinstance(wanted, float)

    def ordered(m: dict[str, Any]) -> bool:
        have = m.get(key)
        if isinstance(have, bool) or have is None:
            return False
        if number:
            return isinstance(have, int | float) and compare(float(have), wanted)
        return isinstance(have, str) and compare(have, wanted)

    assert op in _ORDER
    return ordered


def predicate(conditions: Sequence[pb.Condition], where: str = "filters") -> Predicate | None:
    """One predicate that holds when every condition does (None for no conditions)."""
    if len(conditions) > 32:
        raise InvalidArgument(f"{where}: at most 32 conditions")
    tests = [_test(c, f"{where}[{i}]") for i, c in enumerate(conditions)]
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda m: all(t(m) for t in tests)
