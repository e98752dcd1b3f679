"""Ranking helpers: top-k of a score vector, and the two ways of fusing a sparse and a dense ranking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FUSIONS = ("rrf", "score")
DEFAULT_RRF_K = 60  # Cormack et al. (2009); the constant every RRF implementation uses


def top_k(scores: np.ndarray, k: int, *, positive_only: bool = False) -> np.ndarray:
    """Indices of the k best scores, best first; ties go to the lower index. `positive_only` leaves out
    scores <= 0 (BM25 gives 0 to a passage sharing no term with the query: not a match)."""
    if positive_only:
        candidates = np.flatnonzero(scores > 0)
        values = scores[candidates]
    else:
        candidates, values = None, scores  # no index array or copy of the whole corpus (10^6 passages)
    if values.shape[0] > k:
        # The k-th best value by np.partition (values only: several times faster than argpartition of
        # the negated scores); every score tied with it is kept, so the sort below gives ties to the
        # lower index.
        kth = np.partition(values, values.shape[0] - k)[values.shape[0] - k]
        kept = np.flatnonzero(values >= kth)
        candidates = kept if candidates is None else candidates[kept]
    elif candidates is None:
        candidates = np.arange(values.shape[0])
    # lexsort: last key first — by score descending, then by index
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], k: int = DEFAULT_RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Σ 1 / (k + rank) over the rankings a passage appears in (rank from 1) → (indices, fused scores),
    best first. Scores of different methods never meet, only their ranks."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, index in enumerate(ranking.tolist(), 1):
            fused[index] = fused.get(index, 0.0) + 1.0 / (k + rank)
    return _sorted(fused)


def score_fusion(
    candidates: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of min-max normalised scores over each method's candidates: (indices, scores) of
    each method → (indices, fused scores), best first. A passage a method did not return gets 0 from it."""
    fused: dict[int, float] = {}
    for (indices, scores), weight in zip(candidates, weights):
        if indices.size == 0:
            continue
        low, high = float(scores.min()), float(scores.max())
        normalised = (scores - low) / (high - low) if high > low else np.ones_like(scores)
        for index, value in zip(indices.tolist(), normalised.tolist()):
            fused[index] = fused.get(index, 0.0) + weight * value
    return _sorted(fused)


def _sorted(fused: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    indices = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    order = np.lexsort((indices, -scores))
    return indices[order], scores[order]
