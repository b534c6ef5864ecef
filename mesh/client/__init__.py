"""revo's Python client.

- :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), with one facade per
  engine: ``client.recall``, ``client.tasks``, ``client.models``, ``client.creative``,
  ``client.workflows`` (:mod:`mesh.client.engines`); ``from_env()`` reads
  :data:`mesh.client.api.CLIENT_VARIABLES`.
- Credentials and token refresh: :mod:`mesh.client.session`; retries of what is safe to
  repeat: :mod:`mesh.client.retry`; streams and resumed watches: :mod:`mesh.client.streams`.
- :class:`MeshClient`: the connection underneath, for generated stubs of any engine.
- Failed calls raise the mesh's errors (:mod:`mesh.errors`): ``NotFound``,
  ``RateLimited`` (``retry_after``), ``BudgetExhausted``, ``Unauthenticated`` (its
  ``reason`` says expired, revoked or missing), ...
"""

from mesh.client.api import AsyncClient, Client
from mesh.client.connection import MeshClient, client_credentials, probe_mesh, rpc_error
from mesh.client.retry import RetryPolicy
from mesh.client.session import Session

__all__ = ["AsyncClient", "Client", "MeshClient", "RetryPolicy", "Session",
           "client_credentials", "probe_mesh", "rpc_error"]
