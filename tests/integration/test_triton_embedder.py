"""The embedder model on a real Triton server (the binary from nvidia-pytriton), over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton_grpc

from mesh.embedded.triton import TritonServer


@pytest.fixture(scope="module")
def client(triton: TritonServer) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(triton.grpc_url) as client:
        yield client


def embed(client: triton_grpc.InferenceServerClient,
          sentences: list[str]) -> npt.NDArray[np.float32]:
    text = triton_grpc.InferInput("TEXT", [len(sentences), 1], "BYTES")
    text.set_data_from_numpy(np.array([[s.encode()] for s in sentences], dtype=np.object_))
    result = client.infer("embedder", [text], timeout=30)
    return np.asarray(result.as_numpy("EMBEDDING"), dtype=np.float32)


def test_only_the_configured_model_is_loaded(client) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]

    assert [m["name"] for m in index if m.get("state") == "READY"] == ["embedder"]


def test_embeddings_are_unit_vectors_of_384(client) -> None:
    vectors = embed(client, ["a cat sits on the mat", "stock prices fell", "héllo wörld"])

    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_are_closer(client) -> None:
    cat, kitten, stocks = embed(
        client, ["a cat sits on the mat", "a kitten is on the rug", "stock prices fell"])

    assert float(cat @ kitten) > float(cat @ stocks) + 0.2


def test_a_sentence_embeds_the_same_alone_and_batched(client) -> None:
    alone = embed(client, ["a cat sits on the mat"])[0]
    batched = embed(client, ["stock prices fell", "a cat sits on the mat", "x" * 300])[1]

    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_concurrent_requests_each_get_their_own_vectors(client) -> None:
    sentences = [f"sentence number {i} about {topic}"
                 for i, topic in enumerate(["cats", "stocks", "rain", "code"] * 4)]
    expected = embed(client, sentences)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: embed(client, [s])[0], sentences))

    np.testing.assert_allclose(np.stack(results), expected, atol=1e-5)


async def test_the_mesh_embeds_through_the_async_client(triton: TritonServer) -> None:
    from mesh.errors import InvalidArgument
    from mesh.models.local import TritonEmbedder

    embedder = TritonEmbedder(triton.grpc_url)
    try:
        assert await embedder.ready()
        texts = [f"sentence number {i} about cats" for i in range(70)]  # two slices of 64
        vectors = await embedder.embed(texts)
        assert len(vectors) == 70
        assert all(len(v) == 384 for v in vectors)
        np.testing.assert_allclose(np.asarray(vectors[0]), embed(
            triton_grpc.InferenceServerClient(triton.grpc_url), [texts[0]])[0], atol=1e-5)
        with pytest.raises(InvalidArgument, match="empty"):
            await embedder.embed(["fine", "  "])
    finally:
        await embedder.close()
    unready = TritonEmbedder("127.0.0.1:1")
    assert not await unready.ready()
    await unready.close()
