"""Roles, the permissions each grants, and the permission each method declares.

A method declares what it needs in its proto::

    rpc Search(SearchRequest) returns (SearchResponse) {
      option (revo.mesh.v1.permission) = PERMISSION_READ;
    }

The gateway reads the option from the descriptor the engine announces, so an engine from
any distribution declares its permissions the same way. A method with no declaration
needs ``manage``: deny by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from google.protobuf.descriptor import MethodDescriptor

from mesh.errors import InvalidArgument
from mesh.v1 import auth_pb2, options_pb2

if TYPE_CHECKING:
    Permission: TypeAlias = options_pb2.Permission.ValueType
else:  # the enum's values are ints at run time
    Permission = int

__all__ = ["PERMISSION_NAMES", "ROLES", "Permission", "declared_permission", "grants",
           "lower_role", "permission_name", "role_message", "role_name", "role_within"]

READ = options_pb2.PERMISSION_READ
WRITE = options_pb2.PERMISSION_WRITE
EXECUTE = options_pb2.PERMISSION_EXECUTE
MANAGE = options_pb2.PERMISSION_MANAGE
PUBLIC = options_pb2.PERMISSION_PUBLIC

ROLES: dict[str, frozenset[Permission]] = {
    "admin": frozenset({READ, WRITE, EXECUTE, MANAGE}),
    "developer": frozenset({READ, WRITE, EXECUTE}),
    "analyst": frozenset({READ, EXECUTE}),
    "viewer": frozenset({READ}),
}
"""Each role and what it grants. ``admin`` alone manages users."""

_ROLE_VALUES: dict[str, int] = {"admin": auth_pb2.ROLE_ADMIN,
                                "developer": auth_pb2.ROLE_DEVELOPER,
                                "analyst": auth_pb2.ROLE_ANALYST,
                                "viewer": auth_pb2.ROLE_VIEWER}
"""The contract's ``revo.auth.v1.Role`` of each role name (names are what the user store,
tokens and configuration keep)."""
_ROLE_NAMES = {value: name for name, value in _ROLE_VALUES.items()}


def role_message(name: str) -> auth_pb2.Role.ValueType:
    """The ``Role`` enum value of a role name (``ROLE_UNSPECIFIED`` for none or unknown)."""
    return auth_pb2.Role.ValueType(_ROLE_VALUES.get(name, auth_pb2.ROLE_UNSPECIFIED))


def role_name(value: int, field: str = "role", *, default: str | None = None) -> str:
    """The role name of a request's ``Role`` field; ``default`` for ROLE_UNSPECIFIED when
    given, else INVALID_ARGUMENT (as for a number that is no role)."""
    if value == auth_pb2.ROLE_UNSPECIFIED and default is not None:
        return default
    name = _ROLE_NAMES.get(value)
    if name is None:
        choices = ", ".join(auth_pb2.Role.Name(v) for v in _ROLE_NAMES)  # type: ignore[arg-type]
        if value == auth_pb2.ROLE_UNSPECIFIED:
            raise InvalidArgument(violations=[(field, f"is required: one of {choices}")])
        raise InvalidArgument(violations=[(field, f"must be one of {choices}, got {value}")])
    return name


PERMISSION_NAMES: dict[Permission, str] = {
    PUBLIC: "public", READ: "read", WRITE: "write", EXECUTE: "execute", MANAGE: "manage",
}


def permission_name(permission: Permission) -> str:
    return PERMISSION_NAMES.get(permission, "manage")


def declared_permission(method: MethodDescriptor) -> Permission:
    """What ``method`` needs: its ``(revo.mesh.v1.permission)`` option, else ``manage``."""
    options = method.GetOptions()
    if options.HasExtension(options_pb2.permission):
        value = options.Extensions[options_pb2.permission]
        if value in PERMISSION_NAMES:
            return value
    return MANAGE


def grants(role: str, permission: Permission) -> bool:
    """Whether ``role`` may call a method that needs ``permission``."""
    return permission == PUBLIC or permission in ROLES.get(role, frozenset())


def role_within(role: str, cap: str) -> bool:
    """Whether ``role`` grants nothing that ``cap`` does not (an API key's role against
    its owner's): the roles are ordered, each granting what the next one down does."""
    return role in ROLES and ROLES[role] <= ROLES.get(cap, frozenset())


def lower_role(role: str, other: str) -> str:
    """The lower of two roles (an API key acts with its own role, or its owner's current
    role when the owner has been moved down since)."""
    return role if role_within(role, other) else other
