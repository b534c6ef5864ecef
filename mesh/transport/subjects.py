"""Every NATS subject and queue group the mesh uses, built from validated tokens.

=======================================  ============================================
``revo.rpc.<package>.<Service>.<Method>``  one RPC; nodes serving it share a queue group
``<queue group>`` = ``revo.<package>.<Service>``
KV bucket ``revo_registry``, key ``nodes.<node id>``  a node's announcement
KV bucket ``revo_users``, key ``users.<name>``       a user (mesh.auth.users)
KV bucket ``revo_revocations``, ``jti.<id>`` / ``user.<name>``  revoked tokens
stream ``REVO_LIMITS``: ``revo.limits.<key>.w<ms>.<n>``  rate-limit counters
stream ``REVO_AUDIT``: ``revo.audit.<allow|deny>.<user>``  audit records
stream ``REVO_SPEND``: ``revo.spend.<user>.<period>``  model spend, micro-USD (budgets)
stream ``REVO_LEDGER``: ``revo.ledger.<user>``  one record per model call
=======================================  ============================================

Application subjects never start with ``$`` (reserved for the server).
"""

from __future__ import annotations

import hashlib
import re

RPC_PREFIX = "revo.rpc"
CANCEL_PREFIX = "revo.cancel"
REGISTRY_BUCKET = "revo_registry"
REGISTRY_NODE_PREFIX = "nodes."
USERS_BUCKET = "revo_users"
REVOCATIONS_BUCKET = "revo_revocations"
LIMITS_STREAM = "REVO_LIMITS"
LIMITS_PREFIX = "revo.limits"
AUDIT_STREAM = "REVO_AUDIT"
AUDIT_PREFIX = "revo.audit"
SPEND_STREAM = "REVO_SPEND"
SPEND_PREFIX = "revo.spend"
LEDGER_STREAM = "REVO_LEDGER"
LEDGER_PREFIX = "revo.ledger"

_SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _service(service: str) -> str:
    if not _SERVICE.fullmatch(service):
        raise ValueError(f"not a fully qualified service name: {service!r}")
    return service


def method_subject(service: str, method: str) -> str:
    """Subject of one RPC, e.g. ``revo.rpc.revo.echo.v1.EchoService.Echo``."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"not a method name: {method!r}")
    return f"{RPC_PREFIX}.{_service(service)}.{method}"


def service_wildcard(service: str) -> str:
    """Subject that matches every RPC of ``service``."""
    return f"{RPC_PREFIX}.{_service(service)}.*"


def queue_group(service: str) -> str:
    """Queue group in which every node serving ``service`` subscribes."""
    return f"revo.{_service(service)}"


def method_from_subject(subject: str) -> str:
    """The method token of an RPC subject."""
    return subject.rsplit(".", 1)[1]


def cancel_subject(node_id: str) -> str:
    """Where a caller asks node ``node_id`` to cancel a unary call it accepted (header
    ``Revo-Cancel``: the call's reply subject)."""
    if not _NODE_ID.fullmatch(node_id):
        raise ValueError(f"node id must be 1-128 of [A-Za-z0-9_-]: {node_id!r}")
    return f"{CANCEL_PREFIX}.{node_id}"


def registry_key(node_id: str) -> str:
    """KV key of a node's announcement."""
    if not _NODE_ID.fullmatch(node_id):
        raise ValueError(f"node id must be 1-128 of [A-Za-z0-9_-]: {node_id!r}")
    return REGISTRY_NODE_PREFIX + node_id


def grpc_path(service: str, method: str) -> str:
    """The gRPC path ``/package.Service/Method``."""
    return f"/{service}/{method}"


def subject_token(text: str) -> str:
    """A NATS-subject-safe token for any text (names that are safe already stay as they are)."""
    if text.replace("-", "").replace("_", "").isalnum() and len(text) <= 64:
        return text
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:24]
