"""Reading an OpenAI request body field by field: each value's type checked, each refusal
naming the field's path (``param``), and no field left unread.

The policy for fields this API does not serve (docs/http-api.md): a field is *mapped*
onto the mesh's request, *ignored* on purpose (it changes nothing in the answer, such as
``user`` or ``metadata``), accepted only at its *neutral* value (``logprobs: false``,
``presence_penalty: 0``: any other value is refused, since it would change the answer),
or *unknown*, and then refused with its name. ``null`` is the same as absent, as OpenAI
reads it.
"""

from __future__ import annotations

import json
from typing import Any

from mesh.gateway.openai.errors import ApiError, bad_request

__all__ = ["Fields", "parse_json"]


def parse_json(raw: bytes) -> Fields:
    """The request's body as a JSON object; 400 when it is not one."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}. Send a JSON object "
                       "with content-type application/json", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, not "
                       f"{_kind(value)}", code="invalid_json")
    return Fields(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _same(value: Any, neutral: Any) -> bool:
    """Equal as JSON values (``0`` is ``0.0``; ``false`` is not ``0``)."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return bool(value == neutral)


class Fields:
    """A JSON object of the request; each ``take``/typed read marks a field as read, and
    :meth:`done` refuses any field not read."""

    __slots__ = ("_path", "_read", "_value")

    def __init__(self, value: dict[str, Any], path: str = "") -> None:
        self._value = value
        self._path = path
        self._read: set[str] = set()

    def param(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def take(self, name: str) -> Any:
        """The field's value; None when absent or null."""
        self._read.add(name)
        return self._value.get(name)

    def _wrong(self, name: str, wanted: str, value: Any) -> ApiError:
        return bad_request(f"{self.param(name)} must be {wanted}, not {_kind(value)}",
                           self.param(name), "invalid_type")

    def required(self, name: str) -> Any:
        value = self.take(name)
        if value is None:
            raise bad_request(f"{self.param(name)} is required", self.param(name),
                              "missing_required_parameter")
        return value

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self.required(name) if required else self.take(name)
        if value is not None and not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.take(name)
        if value is not None and not isinstance(value, bool):
            raise self._wrong(name, "true or false", value)
        return value

    def number(self, name: str, low: float, high: float) -> float | None:
        value = self.take(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(name, "a number", value)
        if not low <= value <= high:
            raise bad_request(f"{self.param(name)} must be between {low:g} and {high:g}, got "
                              f"{value:g}", self.param(name))
        return float(value)

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.take(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(name, "a whole number", value)
        if not low <= value <= high:
            raise bad_request(f"{self.param(name)} must be between {low} and {high}, got "
                              f"{value}", self.param(name))
        return value

    def array(self, name: str, *, required: bool = False) -> list[Any] | None:
        value = self.required(name) if required else self.take(name)
        if value is not None and not isinstance(value, list):
            raise self._wrong(name, "an array", value)
        return value

    def object(self, name: str, *, required: bool = False) -> Fields | None:
        value = self.required(name) if required else self.take(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._wrong(name, "an object", value)
        return Fields(value, self.param(name))

    def element(self, items: list[Any], index: int, name: str) -> Fields:
        """Item ``index`` of the array field ``name`` (read already), as an object."""
        value = items[index]
        path = f"{self.param(name)}[{index}]"
        if not isinstance(value, dict):
            raise bad_request(f"{path} must be an object, not {_kind(value)}", path,
                              "invalid_type")
        return Fields(value, path)

    def ignore(self, *names: str) -> None:
        """Fields accepted and knowingly not used (they change nothing in the answer)."""
        self._read.update(names)

    def neutral(self, name: str, *values: Any, why: str) -> None:
        """A field accepted only at one of its neutral ``values`` (or null): any other
        value would change the answer in a way the mesh cannot, so it is refused."""
        value = self.take(name)
        if value is None or any(_same(value, v) for v in values):
            return
        shown = " or ".join(json.dumps(v) for v in values)
        raise bad_request(f"{self.param(name)} is not supported ({why}): omit it"
                          + (f" or send {shown}" if values else ""),
                          self.param(name), "unsupported_parameter")

    def done(self) -> None:
        """Refuse every field not read, by name."""
        unknown = sorted(set(self._value) - self._read)
        if unknown:
            names = ", ".join(self.param(n) for n in unknown)
            where = f"in {self._path}" if self._path else "in the request"
            raise bad_request(f"unknown field{'s' if len(unknown) > 1 else ''} {where}: "
                              f"{names}. This API refuses fields it does not serve rather "
                              "than drop them (docs/http-api.md lists those it accepts)",
                              self.param(unknown[0]), "unknown_parameter")
