"""Call the example echo engine through a running mesh (`./dev up` in another terminal).

    .venv/bin/python examples/echo_client.py [--target 127.0.0.1:50051]
"""

from __future__ import annotations

import argparse
import asyncio

from mesh.client import MeshClient
from revo_engine_echo._gen.revo.echo.v1 import echo_pb2, echo_pb2_grpc


async def main(target: str) -> None:
    async with MeshClient(target, timeout=5.0, metadata=[("x-request-id", "example-1")]) as client:
        for node in await client.list_nodes():
            print(f"node {node.id}: engines {', '.join(e.name for e in node.engines)}")
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"hello, revo"))
        print(f"Echo -> {reply.payload.decode()!r} (answered by {reply.node_id})")
        counted = [r.index async for r in echo.Count(echo_pb2.CountRequest(count=5))]
        print(f"Count streamed {counted}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051")
    asyncio.run(main(parser.parse_args().target))
