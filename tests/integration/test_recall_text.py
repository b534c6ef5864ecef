"""Perfect Recall with text: embeddings from ModelService.Embed on a real Triton embedder."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mesh.embedded.triton import TritonServer
from mesh.testing import MeshHarness, wait_for
from revo_engine_recall.v1 import recall_pb2 as pb
from revo_engine_recall.v1 import recall_pb2_grpc
from tests.integration.recall_support import PROJECT, collection, memory

SERVICE = "revo.recall.v1.RecallService"


async def _mesh(mesh_harness: Any, triton_url: str) -> MeshHarness:
    harness: MeshHarness = await mesh_harness(
        plugins={"only": ["recall", "models"]}, models={"triton_url": triton_url},
        engines={"recall": {"collection": collection()}})
    await harness.wait_for_service(SERVICE)
    await harness.wait_for_service("revo.models.v1.ModelService")
    pool: Any = harness.nodes[0].pools["recall"]
    engine = pool.engine
    await wait_for(lambda: engine.replica.index is not None, 30, "the memory index loaded")
    return harness


async def test_texts_are_embedded_by_the_mesh_and_found_by_meaning(
        mesh_harness: Any, triton: TritonServer) -> None:
    recall = recall_pb2_grpc.RecallServiceStub((await _mesh(mesh_harness,
                                                           triton.grpc_url)).channel)
    facts = ["The staging database is Postgres 16 on port 5433.",
             "Deploys to production happen every Tuesday afternoon.",
             "The team's cat is called Miso and likes the server room.",
             "Unit tests must not sleep; use fake clocks instead."]
    stored = await recall.Remember(pb.RememberRequest(memories=[memory(f) for f in facts]),
                                   timeout=30)
    assert {r.outcome for r in stored.results} == {pb.OUTCOME_STORED}
    found = await recall.Search(pb.SearchRequest(text="which port does the staging DB use?",
                                                 top_k=2, scopes=[PROJECT]), timeout=30)
    assert found.hits[0].memory.text == facts[0]
    assert found.hits[0].score > found.hits[1].score
    pet = await recall.Search(pb.SearchRequest(text="what is our pet's name", top_k=1),
                              timeout=30)
    assert pet.hits[0].memory.text == facts[2]
    # The same fact in other case (the model is uncased) is merged, not stored again.
    again = await recall.Remember(pb.RememberRequest(memories=[
        memory("deploys to production happen every tuesday afternoon.")]), timeout=30)
    assert again.results[0].outcome == pb.OUTCOME_MERGED
    assert again.results[0].id == stored.results[1].id
    # Update re-embeds: the memory is found by its new meaning.
    await recall.Update(pb.UpdateRequest(id=stored.results[3].id,
                                         text="Our mascot is a dog named Pixel."), timeout=30)
    mascot = await recall.Search(pb.SearchRequest(text="what is the dog called", top_k=1),
                                 timeout=30)
    assert mascot.hits[0].memory.id == stored.results[3].id


async def test_text_without_an_embedding_model_says_how_to_get_one(mesh_harness: Any) -> None:
    harness: MeshHarness = await mesh_harness(
        plugins={"only": ["recall"]}, engines={"recall": {"collection": collection()}})
    await harness.wait_for_service(SERVICE)
    pool: Any = harness.nodes[0].pools["recall"]
    await wait_for(lambda: pool.engine.replica.index is not None, 30, "the memory index loaded")
    recall = recall_pb2_grpc.RecallServiceStub(harness.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await recall.Remember(pb.RememberRequest(memories=[memory("no model here")]),
                              timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "send vectors" in str(caught.value.details())
