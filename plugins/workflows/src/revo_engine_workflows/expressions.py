"""Expressions in workflow definitions: Google's CEL (cel.dev), through ``cel-python``.

CEL is the expression language of protovalidate, IAM conditions and Kubernetes admission
policies: side-effect free, with no loops or I/O, so a definition cannot make an
expression do anything but compute a value. Definitions use it for a call's request
(``request_expr``), a task's payload, a step's condition (``when``), a map group's items,
a vote's key and the run's output.

Variables an expression may read (:data:`ROOTS`):

``input``
    the run's input (JSON);
``steps``
    ``steps.<id>.output`` of the steps finished before (a step that reads
    ``steps.<id>`` needs that step: :attr:`Expression.steps` lists them);
``run``
    ``run.id``, ``run.workflow``, ``run.version``, ``run.started_by``;
``item``, ``index``
    inside a map group's ``each`` step: the item and its position;
``output``
    in a vote's key: one branch's output; in a vote judge's ``choice``: the judge's reply;
``outputs``
    in a vote judge's request and ``choice``: the outputs of the branches that succeeded.

Besides CEL's standard functions and macros, ``join`` from CEL's strings extension:
``list.join()`` and ``list.join(separator)`` concatenate a list of strings.

Values cross into CEL as JSON (whole numbers as ints, so that ``size(x) + input.n``
works although JSON numbers arrive as doubles) and come back as JSON-able Python values
(``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``; timestamps and
durations as RFC 3339 strings and seconds).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

__all__ = ["ROOTS", "Expression", "ExpressionError", "compile_expression", "to_json"]

ROOTS = frozenset({"input", "steps", "run", "item", "index", "output", "outputs"})
"""Every variable a workflow expression may name."""

MAX_SOURCE = 4096
"""The longest expression accepted, in characters."""

_ENV = celpy.Environment()


def _join(items: Any, separator: Any = None) -> celtypes.StringType:
    """``list.join(separator)`` of CEL's strings extension: the strings, separated."""
    if not isinstance(items, list):
        raise TypeError(f"join needs a list of strings, got {type(items).__name__}")
    if separator is not None and not isinstance(separator, str):
        raise TypeError("join's separator must be a string")
    wrong = [type(i).__name__ for i in items if not isinstance(i, str)]
    if wrong:
        raise TypeError(f"join needs a list of strings; it has a {wrong[0]}")
    return celtypes.StringType((separator or "").join(items))


_FUNCTIONS: dict[str, Any] = {"join": _join}


class ExpressionError(ValueError):
    """An expression that does not compile, names an unknown variable, or fails to
    evaluate; the message says which and where."""


@dataclass(frozen=True)
class Expression:
    """A compiled expression."""

    source: str
    roots: frozenset[str]
    """The variables it names."""
    steps: frozenset[str]
    """The step ids it reads through ``steps.<id>`` or ``steps["<id>"]``."""
    _program: Any

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The value for ``variables`` (JSON-able values by variable name), as JSON."""
        activation = {name: json_to_cel(_whole(value)) for name, value in variables.items()
                      if name in self.roots}
        try:
            result = self._program.evaluate(activation)
        except CELEvalError as error:
            raise ExpressionError(f"{self.source[:200]!r} failed: {_reason(error)}") from None
        except Exception as error:  # cel-python raises plain errors for some type mixes
            raise ExpressionError(f"{self.source[:200]!r} failed: {error}") from None
        if isinstance(result, CELEvalError):
            raise ExpressionError(f"{self.source[:200]!r} failed: {_reason(result)}")
        return to_json(result)


def _whole(value: Any) -> Any:
    """JSON numbers that are whole as ints: JSON has one number type, and a
    ``google.protobuf.Value`` holds every number as a double, but CEL keeps int and double
    apart (``size(x) + 1.0`` is an error)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _reason(error: Exception) -> str:
    message = str(error.args[0]) if error.args else str(error)
    undeclared = re.match(r"undeclared reference to '([^']+)'", message)
    if undeclared:
        return f"{undeclared.group(1)!r} is not defined here"
    return message[:300]


def compile_expression(source: str, allowed: Iterable[str] = ROOTS) -> Expression:
    """``source`` compiled; :class:`ExpressionError` when it does not parse or names a
    variable outside ``allowed``."""
    if len(source) > MAX_SOURCE:
        raise ExpressionError(f"the expression is {len(source)} characters, over the limit "
                              f"of {MAX_SOURCE}")
    try:
        tree = _ENV.compile(source)
    except CELParseError as error:
        detail = str(error).strip().splitlines()
        raise ExpressionError(f"{source[:200]!r} does not parse as CEL: "
                              f"{' '.join(line.strip() for line in detail)[:300]}") from None
    roots, steps = _references(tree)
    unknown = sorted(roots - frozenset(allowed))
    if unknown:
        raise ExpressionError(
            f"{source[:200]!r} names {', '.join(repr(u) for u in unknown)}; here an "
            f"expression may read {', '.join(sorted(allowed))}")
    return Expression(source, frozenset(roots), frozenset(steps),
                      _ENV.program(tree, functions=_FUNCTIONS))


_BUILTIN_IDENTS = frozenset({"null", "true", "false"})


def _references(tree: Any) -> tuple[set[str], set[str]]:
    """The root variables a CEL syntax tree names, and the step ids it reads."""
    roots: set[str] = set()
    steps: set[str] = set()
    bound: set[str] = set()  # the variables of macros: xs.map(x, ...), xs.exists(x, ...)
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) in _MACROS \
                and len(node.children) > 2:
            first = node.children[2].children[0] if node.children[2].children else None
            name = _names(_only_member(first)) if first is not None else None
            if name is not None:
                bound.add(name)
    for node in tree.iter_subtrees():
        if node.data == "primary":
            child = node.children[0]
            if getattr(child, "data", None) == "ident":
                name = str(child.children[0])
                if name not in _BUILTIN_IDENTS:
                    roots.add(name)
        elif node.data in ("member_dot", "member_index"):
            base, key = node.children[0], node.children[1]
            if _names(base) != "steps":
                continue
            if node.data == "member_dot":
                steps.add(str(key))
            else:
                literal = _literal_string(key)
                if literal is not None:
                    steps.add(literal)
    return roots - bound, steps


_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


def _only_member(expr: Any) -> Any:
    """The ``member`` node an ``expr`` node is made of alone (a bare identifier, say)."""
    node = expr
    while getattr(node, "data", None) not in (None, "member") and len(node.children) == 1:
        node = node.children[0]
    return node


def _names(member: Any) -> str | None:
    """The identifier a ``member`` node is, when it is one plain identifier."""
    if getattr(member, "data", None) != "member" or len(member.children) != 1:
        return None
    primary = member.children[0]
    if getattr(primary, "data", None) != "primary":
        return None
    ident = primary.children[0]
    if getattr(ident, "data", None) != "ident":
        return None
    return str(ident.children[0])


def _literal_string(node: Any) -> str | None:
    """The value of a string literal that is the whole of ``node``, else None."""
    literals = [n for n in node.iter_subtrees() if n.data == "literal"]
    if len(literals) != 1:
        return None
    token = str(literals[0].children[0])
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return None


def to_json(value: Any) -> Any:
    """A CEL value as a JSON-able Python value."""
    if value is None or isinstance(value, celtypes.BoolType | bool):
        return None if value is None else bool(value)
    if isinstance(value, celtypes.IntType | celtypes.UintType):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.BytesType):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, celtypes.TimestampType):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, celtypes.DurationType):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, CELEvalError):  # an error inside a list or map
        raise ExpressionError(_reason(value))
    raise ExpressionError(f"a value of type {type(value).__name__} has no JSON form")
