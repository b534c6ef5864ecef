"""Scopes: whose a memory is, written as one key string, and who may reach it.

``user:<user>``, ``agent:<user>/<agent>``, ``session:<user>/<session>`` belong to one user
(alice's session ``s1`` is not bob's); ``project:<project>`` is shared by the project's
members (``[engines.recall.projects]``). A caller with the ``manage`` permission reaches
every scope. With auth off every caller is ``anonymous`` and reaches every scope.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from mesh.auth.roles import MANAGE, grants
from mesh.errors import InvalidArgument, PermissionDenied
from revo_engine_recall.v1 import recall_pb2 as pb

__all__ = ["ANONYMOUS", "Access", "scope_key", "scope_message"]

ANONYMOUS = "anonymous"
"""The user of every call when auth is off."""

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
_KINDS = {pb.SCOPE_KIND_USER: "user", pb.SCOPE_KIND_AGENT: "agent",
          pb.SCOPE_KIND_SESSION: "session", pb.SCOPE_KIND_PROJECT: "project"}
_BY_NAME = {name: kind for kind, name in _KINDS.items()}


def _name(value: str, what: str, where: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidArgument(f"{where}: {what} {value[:80]!r} must be 1 to 128 letters, "
                              "digits or . _ - @")
    return value


def scope_key(scope: pb.Scope, caller: str, where: str = "scope") -> str:
    """The key of ``scope`` as ``caller`` names it, or InvalidArgument."""
    kind = _KINDS.get(scope.kind)
    if kind is None:
        known = ", ".join(pb.ScopeKind.Name(k) for k in _KINDS)
        raise InvalidArgument(f"{where}: unknown scope kind {scope.kind}; use one of {known}")
    if kind == "project":
        if scope.user:
            raise InvalidArgument(f"{where}: a project scope has no user")
        return f"project:{_name(scope.id, 'project', where)}"
    user = _name(scope.user, "user", where) if scope.user else (caller or ANONYMOUS)
    if kind == "user":
        if scope.id and scope.id != user:
            raise InvalidArgument(f"{where}: a user scope's id is its user; leave id empty "
                                  "(or set user for another user's memories)")
        return f"user:{user}"
    return f"{kind}:{user}/{_name(scope.id, kind, where)}"


def scope_message(key: str) -> pb.Scope:
    kind, _, rest = key.partition(":")
    if kind == "project":
        return pb.Scope(kind=pb.SCOPE_KIND_PROJECT, id=rest)
    if kind == "user":
        return pb.Scope(kind=pb.SCOPE_KIND_USER, user=rest)
    user, _, ident = rest.partition("/")
    return pb.Scope(kind=_BY_NAME[kind], id=ident, user=user)


class Access:
    """What one caller may reach."""

    def __init__(self, caller: str, role: str, auth: bool,
                 projects: Mapping[str, Sequence[str]]) -> None:
        self.caller = caller or ANONYMOUS
        self.everything = not auth or grants(role, MANAGE)
        self._projects = projects

    def allows(self, key: str) -> bool:
        if self.everything:
            return True
        kind, _, rest = key.partition(":")
        if kind == "project":
            members = self._projects.get(rest)
            return members is None or "*" in members or self.caller in members
        return rest.partition("/")[0] == self.caller

    def check(self, key: str, where: str) -> str:
        if not self.allows(key):
            raise PermissionDenied(f"{where}: {self.caller} may not reach scope {key!r} "
                                   "(another user's scopes need the manage permission; "
                                   "projects admit their members)")
        return key

    def resolve(self, scopes: Sequence[pb.Scope], known: Sequence[str],
                where: str = "scopes") -> list[str]:
        """The keys of ``scopes``, each allowed; with none given, every known scope the
        caller may reach."""
        if not scopes:
            return [k for k in known if self.allows(k)]
        return [self.check(scope_key(s, self.caller, f"{where}[{i}]"), f"{where}[{i}]")
                for i, s in enumerate(scopes)]
