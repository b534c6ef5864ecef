"""Every NATS header the mesh sends, in one place.

Requests (gateway -> node):

========================  ==========================================================
``Revo-Request-Id``       id of the call, echoed in logs, audit and replies
``Revo-Timeout-Ms``       milliseconds the caller will wait; the node derives its deadline
``traceparent``           W3C trace context of the caller's span (mesh.observability.tracing)
``tracestate``            W3C vendor trace state, sent with ``traceparent`` when the trace has one
``Revo-Caller``           authenticated user (set only by a gateway)
``Revo-Role``             the caller's role (set only by a gateway)
``Revo-Identity``         seal over caller and role: ``<expires ms>.<HMAC>`` (mesh.auth.identity)
``Revo-Stream-Window``    server streaming: messages the node may send before an ack
``Revo-Idempotency-Key``  the caller's key for the call's effect (gRPC metadata
                          ``idempotency-key``, or a workflow step's): ``Context.idempotency_key``
========================  ==========================================================

Replies (node -> gateway):

========================  ==========================================================
``Revo-Status``           gRPC status number; absent means OK
``Revo-Message``          the status message a person reads
``Revo-Status-Details``   base64 ``google.rpc.Status`` with the error's details (reason,
                          retry delay, field violations; see mesh.errors); sent only
                          with ``Revo-Status``, only when the error has details
``Revo-Accepted``         the call is running on this node (sent when it takes a while)
``Revo-Stream-Control``   first stream message: subject for acks and cancel
``Revo-Node``             first stream message: the node serving the stream
``Revo-End``              last stream message (end-of-stream marker, carries the status)
========================  ==========================================================

Stream control (gateway -> node, on the control subject):

========================  ==========================================================
``Revo-Ack``              messages consumed since the last ack (grants that much credit)
``Revo-Cancel``           the caller went away; stop the stream
========================  ==========================================================

Unary cancel (caller -> node, on ``revo.cancel.<node id>`` of the node that accepted it):

========================  ==========================================================
``Revo-Cancel``           the reply subject of the call to cancel
========================  ==========================================================
"""

from __future__ import annotations

REQUEST_ID = "Revo-Request-Id"
TIMEOUT_MS = "Revo-Timeout-Ms"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CALLER = "Revo-Caller"
ROLE = "Revo-Role"
IDENTITY = "Revo-Identity"
STREAM_WINDOW = "Revo-Stream-Window"
IDEMPOTENCY_KEY = "Revo-Idempotency-Key"

STATUS = "Revo-Status"
MESSAGE = "Revo-Message"
STATUS_DETAILS = "Revo-Status-Details"
ACCEPTED = "Revo-Accepted"
STREAM_CONTROL = "Revo-Stream-Control"
NODE = "Revo-Node"
END = "Revo-End"

ACK = "Revo-Ack"
CANCEL = "Revo-Cancel"

# Set by nats-server itself on a no-responders reply.
NATS_STATUS = "Status"

# Room kept in every NATS message for the mesh's headers when checking a payload's size.
HEADER_ROOM = 4096

_UNSAFE = str.maketrans({"\r": " ", "\n": " "})


def header_text(text: str, limit: int = 1024) -> str:
    """Make ``text`` safe as a header value: one line, bounded length."""
    text = text.translate(_UNSAFE)
    return text if len(text) <= limit else text[: limit - 1] + "…"
