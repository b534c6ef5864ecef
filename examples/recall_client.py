"""Use Perfect Recall through a running mesh (`./dev up` in another terminal).

    .venv/bin/python examples/recall_client.py [--target 127.0.0.1:50051] [--query TEXT]

It remembers a few facts in a project scope and one preference in the caller's own scope
(the mesh embeds them on Triton), shows how a repeat and a retry are handled, searches by
meaning with and without a metadata filter, and prints the counts. Running it twice
stores nothing new: every write is idempotent. Signs in like examples/echo_client.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from google.protobuf.struct_pb2 import Value

from mesh.client import MeshClient
from revo_engine_recall.v1 import recall_pb2 as pb
from revo_engine_recall.v1 import recall_pb2_grpc

PROJECT = pb.Scope(kind=pb.SCOPE_KIND_PROJECT, id="example")
MINE = pb.Scope(kind=pb.SCOPE_KIND_USER)
FACTS = [
    ("The staging database is Postgres 16 on port 5433.", "infra"),
    ("Deploys to production happen every Tuesday afternoon.", "process"),
    ("Unit tests must not sleep; use fake clocks instead.", "process"),
    ("The CI cache lives in an S3 bucket named revo-ci-cache.", "infra"),
]


def read_password(password_file: str | None) -> str:
    home = Path(os.environ.get("REVO_HOME", ".revo"))
    return Path(password_file or home / "secrets" / "admin.password").read_text().strip()


async def main(target: str, user: str, password: str, query: str) -> None:
    async with MeshClient(target, timeout=60.0) as client:
        await client.login(user, password)
        recall = recall_pb2_grpc.RecallServiceStub(client.channel)
        memories = [pb.MemoryInput(scope=PROJECT, text=text, client_id=f"fact-{i}")
                    for i, (text, _) in enumerate(FACTS)]
        for memory, (_, kind) in zip(memories, FACTS, strict=True):
            memory.metadata.update({"kind": kind})
        memories.append(pb.MemoryInput(scope=MINE, text="I prefer short answers with code.",
                                       client_id="pref-1"))
        memories.append(pb.MemoryInput(  # the same fact, other case: merged, not stored
            scope=PROJECT, text="deploys to production happen every tuesday afternoon."))
        stored = await recall.Remember(pb.RememberRequest(memories=memories))
        for memory, result in zip(memories, stored.results, strict=True):
            print(f"{pb.Outcome.Name(result.outcome):17} {result.id[:8]}  {memory.text}")
        found = await recall.Search(pb.SearchRequest(text=query, top_k=3,
                                                     after_sequence=stored.sequence))
        print(f"\nSearch {query!r} ({found.index}):")
        for hit in found.hits:
            print(f"  {hit.score:.3f}  {hit.memory.text}")
        infra = pb.Condition(key="kind", value=Value(string_value="infra"))
        filtered = await recall.Search(pb.SearchRequest(
            text="where is the cache?", top_k=2, scopes=[PROJECT], filters=[infra]))
        print("\nSearch 'where is the cache?' among kind == infra:")
        for hit in filtered.hits:
            print(f"  {hit.score:.3f}  {hit.memory.text}")
        stats = await recall.Stats(pb.StatsRequest())
        for scope in stats.scopes:
            name = pb.ScopeKind.Name(scope.scope.kind).removeprefix("SCOPE_KIND_").lower()
            print(f"\n{name} {scope.scope.id or scope.scope.user}: {scope.memories} memories "
                  f"(quota {scope.quota})", end="")
        print(f"\nindex: {stats.index}")
        await client.logout()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", help="default: <REVO_HOME>/secrets/admin.password")
    parser.add_argument("--query", default="which port is the staging database on?")
    args = parser.parse_args()
    asyncio.run(main(args.target, args.user, read_password(args.password_file), args.query))
