"""Call the example echo engine through a running mesh (`./dev up` in another terminal).

    .venv/bin/python examples/echo_client.py [--target 127.0.0.1:50051]

It signs in as ``admin`` with the password `revo up` generated in
``.revo/secrets/admin.password`` (or ``--user NAME --password-file FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from mesh.client import MeshClient
from mesh.v1 import auth_pb2
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc


def credentials(user: str, password_file: str | None) -> tuple[str, str]:
    home = Path(os.environ.get("REVO_HOME", ".revo"))
    path = Path(password_file) if password_file else home / "secrets" / "admin.password"
    return user, path.read_text().strip()


async def main(target: str, user: str, password_file: str | None) -> None:
    async with MeshClient(target, timeout=5.0, metadata=[("x-request-id", "example-1")]) as client:
        await client.login(*credentials(user, password_file))
        me = await client.auth.WhoAmI(auth_pb2.WhoAmIRequest())
        print(f"signed in as {me.username} ({auth_pb2.Role.Name(me.role)})")
        for node in await client.list_nodes():
            print(f"node {node.id}: engines {', '.join(e.name for e in node.engines)}")
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"hello, revo"))
        print(f"Echo -> {reply.payload.decode()!r} (answered by {reply.node_id})")
        counted = [r.index async for r in echo.Count(echo_pb2.CountRequest(count=5))]
        print(f"Count streamed {counted}")
        await client.logout()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", help="default: <REVO_HOME>/secrets/admin.password")
    args = parser.parse_args()
    asyncio.run(main(args.target, args.user, args.password_file))
