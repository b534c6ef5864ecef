"""One completion through the model router, read to its end: :func:`complete`."""

from __future__ import annotations

from collections.abc import Sequence

from mesh.v1 import models_pb2, models_pb2_grpc

__all__ = ["complete"]


async def complete(models: models_pb2_grpc.ModelServiceAsyncStub,
                   messages: Sequence[tuple[str, str]], *, model: str, temperature: float,
                   max_tokens: int, force_local: bool, cost_limit_usd: float
                   ) -> tuple[str, models_pb2.Done]:
    """Stream one generation from ``ModelService.Generate``: its whole text and its final
    message (model, usage, cost). ``model`` "auto" leaves the choice to the router."""
    request = models_pb2.GenerateRequest(
        messages=[models_pb2.Message(role=role, content=text) for role, text in messages],
        sampling=models_pb2.Sampling(temperature=temperature, max_tokens=max_tokens),
        policy=models_pb2.Policy(force_local=force_local,
                                 model="" if model == "auto" else model,
                                 cost_limit_usd=cost_limit_usd))
    parts: list[str] = []
    done = models_pb2.Done()
    async for event in models.Generate(request):
        if event.HasField("done"):
            done = event.done
        else:
            parts.append(event.delta)
    return "".join(parts), done
