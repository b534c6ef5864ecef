"""Use ModelService through a running mesh (`./dev up` in another terminal).

    .venv/bin/python examples/models_client.py [--target 127.0.0.1:50051] [--prompt TEXT]

It lists the models, embeds two sentences on the local Triton embedder, and (when the
catalog has a model that can answer: a generator checkpoint or a cloud key, see
docs/models.md) streams an answer and shows what it cost. Then it prints the caller's
usage and the router's recommendations. Signs in like examples/echo_client.py.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from pathlib import Path

import grpc

from mesh.client import MeshClient
from mesh.v1 import models_pb2 as pb
from mesh.v1 import models_pb2_grpc


def read_password(password_file: str | None) -> str:
    home = Path(os.environ.get("REVO_HOME", ".revo"))
    return Path(password_file or home / "secrets" / "admin.password").read_text().strip()


async def main(target: str, user: str, password: str, prompt: str) -> None:
    async with MeshClient(target, timeout=60.0) as client:
        await client.login(user, password)
        models = models_pb2_grpc.ModelServiceStub(client.channel)
        listed = await models.ListModels(pb.ListModelsRequest())
        for model in listed.models:
            tier = "local" if model.tier == pb.TIER_LOCAL else "cloud"
            print(f"{model.name:16} {tier:5} {'healthy' if model.healthy else 'NOT READY':9} "
                  f"${model.input_usd_per_million:g}/${model.output_usd_per_million:g} per M "
                  f"tokens, window {model.context_window}")
        try:
            embedded = await models.Embed(pb.EmbedRequest(
                texts=["a queue that never loses work", "durable task execution"]))
            a, b = (e.values for e in embedded.embeddings)
            cosine = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
                sum(x * x for x in a) * sum(y * y for y in b))
            print(f"Embed: {len(embedded.embeddings)} vectors of {len(a)} dimensions, "
                  f"cosine {cosine:.3f}")
        except grpc.aio.AioRpcError as error:
            print(f"Embed: {error.code().name}: {error.details()}")
        if any(m.generates and m.healthy for m in listed.models):
            request = pb.GenerateRequest(messages=[pb.Message(role="user", content=prompt)],
                                         sampling=pb.Sampling(max_tokens=64))
            try:
                async for reply in models.Generate(request):
                    if reply.HasField("done"):
                        done = reply.done
                        print(f"\n[{done.model} via {done.provider}: "
                              f"{done.usage.prompt_tokens}+{done.usage.completion_tokens} "
                              f"tokens, ${done.cost_usd:.6f}, saved ${done.savings_usd:.6f}, "
                              f"{done.latency_ms:.0f} ms, {len(done.switches)} switches]")
                    else:
                        print(reply.delta, end="", flush=True)
            except grpc.aio.AioRpcError as error:
                print(f"Generate: {error.code().name}: {error.details()}")
        else:
            print("Generate: no generating model is ready (see docs/models.md)")
        usage = await models.GetUsage(pb.GetUsageRequest(period=pb.PERIOD_DAY))
        for row in usage.rows:
            print(f"usage {row.period} {row.model}: {row.requests} calls, ${row.cost_usd:.6f}")
        print(f"local share {usage.local_share:.0%}, saved ${usage.total_savings_usd:.6f}")
        for advice in (await models.Recommend(pb.RecommendRequest())).recommendations:
            print(f"advice: {advice.summary}")
        await client.logout()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", help="default: <REVO_HOME>/secrets/admin.password")
    parser.add_argument("--prompt", default="Name three uses of a priority queue.")
    args = parser.parse_args()
    asyncio.run(main(args.target, args.user, read_password(args.password_file), args.prompt))
