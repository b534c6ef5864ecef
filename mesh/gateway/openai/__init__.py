"""The OpenAI-compatible API on the gateway's HTTP door, mapped onto ``ModelService``.

``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/chat/completions`` (streaming and
not, tools, response formats) and ``POST /v1/embeddings``; errors in OpenAI's JSON shape
(:mod:`.errors`); unknown request fields refused by name (:mod:`.fields`); server-sent
events as OpenAI sends them (:mod:`.sse`). docs/http-api.md is the reference.
"""

from mesh.gateway.openai.routes import routes

__all__ = ["routes"]
