"""How different candidates are: cosine similarity, novelty, the Vendi score, and MMR.

Every function takes embeddings as rows of a float array; rows need not be normalized
(each is scaled to unit length first, so a dot product is a cosine).

- **Novelty** of a candidate: ``1 - max cosine`` to the other candidates and to the
  recalled earlier solutions, clipped to [0, 1] (an opposite vector is as novel as an
  orthogonal one).
- **Vendi score** (Friedman and Dieng, 2023): ``exp(-sum(l * log l))`` over the eigenvalues
  ``l`` of ``K / n``, where ``K`` is the candidates' cosine similarity matrix. It is the
  effective number of distinct candidates: ``n`` when all are orthogonal, 1 when all are
  the same. Cosines below 0 are clipped to 0 so that ``K`` stays a similarity.
- **Maximal marginal relevance** (Carbonell and Goldstein, 1998) ranks candidates by
  ``lambda * score - (1 - lambda) * max cosine to those ranked before``, so the top picks
  are good and different.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Matrix", "cosine_matrix", "mean_pairwise_cosine", "mmr_ranking", "novelty", "unit_rows",
           "vendi_score"]

Matrix = NDArray[np.float64]


def unit_rows(vectors: ArrayLike) -> Matrix:
    """``vectors`` as a 2-D float64 array with each nonzero row scaled to length 1."""
    rows = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)  # type: ignore[no-any-return]


def cosine_matrix(vectors: ArrayLike, others: ArrayLike | None = None) -> Matrix:
    """Cosine similarities between the rows of ``vectors`` (and those of ``others``)."""
    a = unit_rows(vectors)
    b = a if others is None else unit_rows(others)
    return a @ b.T  # type: ignore[no-any-return]


def novelty(vector: ArrayLike, against: ArrayLike) -> float:
    """``1 - max cosine`` of ``vector`` to the rows of ``against`` (1.0 when empty)."""
    rows = np.asarray(against, dtype=np.float64)
    if rows.size == 0:
        return 1.0
    closest = float(cosine_matrix(vector, rows).max())
    return float(min(1.0, max(0.0, 1.0 - closest)))


def mean_pairwise_cosine(vectors: ArrayLike) -> float:
    """The mean cosine over every unordered pair of rows (0.0 with fewer than two)."""
    k = cosine_matrix(vectors)
    n = k.shape[0]
    if n < 2:
        return 0.0
    upper = k[np.triu_indices(n, 1)]
    return float(upper.mean())


def vendi_score(vectors: ArrayLike) -> float:
    """The effective number of distinct rows, from 1 to their count (0.0 when empty)."""
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.size == 0:
        return 0.0
    k = np.clip(cosine_matrix(rows), 0.0, 1.0)
    np.fill_diagonal(k, 1.0)
    eigenvalues = np.linalg.eigvalsh(k / k.shape[0])
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def mmr_ranking(scores: Sequence[float], vectors: ArrayLike,
                weight: float = 0.7) -> list[int]:
    """Row indexes, best first, by maximal marginal relevance: each next pick maximizes
    ``weight * score - (1 - weight) * (max cosine to the picks before it)``. Ties keep the
    lower index."""
    n = len(scores)
    if n == 0:
        return []
    k = cosine_matrix(vectors)
    chosen: list[int] = []
    left = list(range(n))
    while left:
        def gain(i: int) -> float:
            redundancy = max((float(k[i, j]) for j in chosen), default=0.0)
            return weight * scores[i] - (1.0 - weight) * redundancy

        best = max(left, key=lambda i: (gain(i), -i))
        chosen.append(best)
        left.remove(best)
    return chosen
