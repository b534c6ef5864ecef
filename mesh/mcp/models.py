"""The ``generate`` tool: text from the mesh's models (``ModelService.Generate``).

The mesh's router picks the model (local first, cloud as fallback) unless the tool is given
one; the key owner's budget and the ledger count the call like any other. The tool reads the
whole stream and returns the text with the model that answered, its tokens and cost.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from mesh.mcp.access import MeshAccess
from mesh.models.finish import openai_finish_reason
from mesh.v1 import models_pb2 as pb
from mesh.v1 import models_pb2_grpc

__all__ = ["Generated", "register"]

TIMEOUT_S = 300.0


class Generated(BaseModel):
    text: str
    model: str = Field(description="the catalog model that answered")
    provider: str = Field(description="triton (local), openai, anthropic, ...")
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = Field(description="what the call cost (0 on a local model)")
    finish_reason: str = Field(description="stop, length, tool_calls or content_filter")
    fallbacks: list[str] = Field(description="each switch to another model: 'from -> to: "
                                 "why'")


def register(server: MCPServer, access: MeshAccess) -> None:
    """Add the ``generate`` tool to ``server``."""
    models = models_pb2_grpc.ModelServiceStub(access.channel)

    async def generate(
        prompt: Annotated[str, Field(min_length=1, description="the user message")],
        ctx: Context,
        system: Annotated[str, Field(description="a system prompt; empty: none")] = "",
        model: Annotated[str, Field(description="a catalog model name; empty or 'auto': "
                                    "the router's choice (local first)")] = "",
        max_tokens: Annotated[int, Field(ge=0, description="completion tokens at most; 0: "
                                         "the model's default")] = 0,
        temperature: Annotated[float, Field(ge=0, le=2, description="0 is greedy")] = 0.0,
        force_local: Annotated[bool, Field(description="only local models: never a paid "
                                           "call")] = False,
    ) -> Generated:
        messages = [pb.Message(role="system", content=system)] if system else []
        messages.append(pb.Message(role="user", content=prompt))
        request = pb.GenerateRequest(
            messages=messages, sampling=pb.Sampling(max_tokens=max_tokens,
                                                    temperature=temperature),
            policy=pb.Policy(model=model, force_local=force_local))
        pieces: list[str] = []
        done = pb.Done()
        with access.errors():
            stream = models.Generate(request, metadata=access.metadata(ctx),
                                     timeout=TIMEOUT_S)
            async for event in stream:
                if event.WhichOneof("event") == "delta":
                    pieces.append(event.delta)
                elif event.HasField("done"):
                    done = event.done
        return Generated(
            text="".join(pieces), model=done.model, provider=done.provider,
            prompt_tokens=done.usage.prompt_tokens,
            completion_tokens=done.usage.completion_tokens, cost_usd=done.cost_usd,
            finish_reason=openai_finish_reason(done.finish_reason),
            fallbacks=[f"{s.from_model} -> {s.to_model}: {s.reason}" for s in done.switches])

    server.add_tool(generate, title="Generate", description=(
        "Generate text with revo's models: local models first, cloud models as fallback, "
        "within the key owner's budget. Returns the text, the model that answered, tokens "
        "and cost."), annotations=ToolAnnotations(open_world_hint=True))

