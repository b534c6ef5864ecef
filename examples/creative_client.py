"""Ask Creative for different solutions to one problem through a running mesh (`./dev up`).

    .venv/bin/python examples/creative_client.py [--target 127.0.0.1:50051] [--n 4]
        [--problem TEXT] [--force-local] [--choose]

It streams the candidates as they are scored (perspective, quality, novelty, innovation),
then the summary (Vendi score, mean pairwise cosine, ranking, cost), and with --choose
remembers the top-ranked candidate in Perfect Recall, so that the next set for a similar
problem is scored novel against it. Creative needs a model that generates: a cloud model
in [[models.catalog]] with its key, or a local one (`models.generator_checkpoint`);
without one it says so. Signs in like examples/echo_client.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc

from mesh.client import MeshClient
from revo_engine_creative.v1 import creative_pb2 as pb
from revo_engine_creative.v1 import creative_pb2_grpc

PROBLEM = ("Our nightly reporting job now takes six hours and often misses the 7am "
           "deadline. How should we fix it?")


def read_password(password_file: str | None) -> str:
    home = Path(os.environ.get("REVO_HOME", ".revo"))
    return Path(password_file or home / "secrets" / "admin.password").read_text().strip()


async def main(args: argparse.Namespace) -> int:
    async with MeshClient(args.target, timeout=300.0) as client:
        await client.login(args.user, read_password(args.password_file))
        creative = creative_pb2_grpc.CreativeServiceStub(client.channel)
        request = pb.GenerateRequest(
            problem=args.problem, n=args.n, constraints=["no new paid services"],
            options=pb.Options(force_local=args.force_local, max_tokens=args.max_tokens))
        summary = None
        try:
            async for event in creative.Generate(request):
                if event.HasField("candidate"):
                    c = event.candidate
                    print(f"[{c.index}] {c.strategy.perspective:12} quality {c.quality:.2f} "
                          f"novelty {c.novelty:.2f} innovation {c.innovation:.2f} "
                          f"({c.model}, {c.usage.completion_tokens} tokens)")
                    print("    " + " ".join(c.text.split())[:200])
                else:
                    summary = event.summary
        except grpc.aio.AioRpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 2
        assert summary is not None
        print(f"\nVendi score {summary.vendi_score:.2f} of {len(summary.scores)}, mean "
              f"pairwise cosine {summary.mean_pairwise_cosine:.2f}, rejected "
              f"{summary.rejected}, failures {len(summary.failures)}")
        print(f"ranking {list(summary.ranking)}, ${summary.total_cost_usd:.4f}, "
              f"{summary.wall_ms / 1000:.1f} s (generation {summary.generation_ms / 1000:.1f} s)")
        if args.choose:
            chosen = await creative.Choose(pb.ChooseRequest(set_id=summary.set_id,
                                                            index=summary.ranking[0]))
            print(f"chose [{summary.ranking[0]}]: memory {chosen.memory_id}")
        return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", help="default: $REVO_HOME/secrets/admin.password")
    parser.add_argument("--problem", default=PROBLEM)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=0, help="0: the engine's default")
    parser.add_argument("--force-local", action="store_true")
    parser.add_argument("--choose", action="store_true", help="remember the top pick")
    sys.exit(asyncio.run(main(parser.parse_args())))
