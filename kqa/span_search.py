"""The span search of `kqa.postprocess` over arrays: the valid start × end pairs of every window
(rules 1 and 2 of its docstring) and, per example, pooled, de-duplicated and ranked (rules 3 and 4).
Every step is a numpy operation over all windows or all candidates at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankedSpans:
    """The n-best spans of all examples as columns (one row per span), in n-best order per example."""

    example: np.ndarray
    char_start: np.ndarray
    char_end: np.ndarray
    score: np.ndarray
    probability: np.ndarray
    start_logit: np.ndarray
    end_logit: np.ndarray


# ---- Per window: the valid start × end pairs (rules 1 and 2) --------------------------------------


def _top_k(masked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indices of the k largest finite values, ascending (`[rows, k]`; -1 for missing ones,
    which come first), and each row's maximum. Equal values: the lower index is taken.

    One `np.sort` per row gives the k-th largest value; when exactly k values reach it, they are the
    answer. Rows with a tie at the cut or fewer than k finite values take a stable argsort instead.
    """
    rows, width = masked.shape
    ordered = np.sort(masked, axis=1)
    kth = ordered[:, width - k]
    exact = np.isfinite(kth) & ~np.isnan(ordered[:, -1])  # NaN sorts last; the caller rejects such rows
    if k < width:
        exact &= ordered[:, width - k - 1] < kth
    take = masked >= kth[:, None]
    if exact.all():
        return (np.flatnonzero(take) % width).reshape(rows, k), ordered[:, -1]
    take[~exact] = False
    chosen = np.empty((rows, k), dtype=np.int64)
    chosen[exact] = (np.flatnonzero(take) % width).reshape(-1, k)
    slow = masked[~exact]
    picked = np.argsort(-slow, axis=1, kind="stable")[:, :k]
    chosen[~exact] = np.sort(np.where(np.isfinite(np.take_along_axis(slow, picked, axis=1)), picked, -1), axis=1)
    return chosen, ordered[:, -1]


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    first_row: int,
    feature_ids: list[str],
    n_best_size: int,
    max_answer_length: int,
) -> tuple:
    """The valid pairs of consecutive windows `first_row`, ... (their logit rows, their tokens' offsets,
    their token counts) as arrays (window, char_start, char_end, start_logit, end_logit), in
    (window, start token, end token) order."""
    rows, width = len(lengths), int(lengths.max(initial=0))
    if width == 0:  # no window with a token
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    k = min(n_best_size, width)
    row_starts = np.cumsum(lengths) - lengths
    # [rows, width]: is position p of window r a context token? A boolean-mask assignment fills the
    # positions in row-major order, as the tokens come.
    is_context = np.zeros((rows, width), dtype=bool)
    is_context[np.arange(width) < lengths[:, None]] = offsets[:, 0] >= 0
    picked = []
    for name, logits, column, missing in (
        ("start", start_logits, 0, np.iinfo(np.int64).max),
        ("end", end_logits, 1, -1),
    ):
        block = logits[:, :width].astype(np.float32) if logits.dtype == np.float16 else logits[:, :width]
        tokens, row_max = _top_k(np.where(is_context, block, -np.inf), k)
        broken = np.isnan(row_max) | (row_max == np.inf)  # they would beat every real logit
        if broken.any():
            r = int(np.argmax(broken))
            raise ValueError(
                f"window {first_row + r} (example {feature_ids[first_row + r]!r}): {name} logits hold "
                f"{row_max[r]} at a context token (logits must be finite)"
            )
        found = tokens >= 0
        values = np.take_along_axis(block, np.maximum(tokens, 0), axis=1).astype(np.float64)
        # A missing start gets char_start +max, a missing end char_end -1: they never cover a character.
        chars = np.where(found, offsets[np.where(found, row_starts[:, None] + tokens, 0), column], missing)
        picked.append((tokens, values, chars))
    (start_token, start_value, start_char), (end_token, end_value, end_char) = picked

    # Rule 2 on the k × k grid of each window's pairs (start a, end b), flattened to (r * k + a) * k + b.
    length = end_token[:, None, :] - start_token[:, :, None]
    valid = (length >= 0) & (length < max_answer_length) & (end_char[:, None, :] > start_char[:, :, None])
    valid = valid.reshape(rows, k * k)
    crowded = np.flatnonzero(np.count_nonzero(valid, axis=1) > 2 * n_best_size)
    if len(crowded):
        valid[crowded] = _prune(
            valid[crowded],
            start_value[crowded],
            end_value[crowded],
            start_char[crowded],
            end_char[crowded],
            n_best_size,
        )
    cells = np.flatnonzero(valid)
    r, a, b = cells // (k * k), cells // k % k, cells % k
    return first_row + r, start_char[r, a], end_char[r, b], start_value[r, a], end_value[r, b]


def _prune(
    valid: np.ndarray,
    start_value: np.ndarray,
    end_value: np.ndarray,
    start_char: np.ndarray,
    end_char: np.ndarray,
    n_best: int,
) -> np.ndarray:
    """`valid` limited to the pairs scoring at least their window's n_best-th best valid pair.

    Exact: a pair left out is beaten by n_best valid pairs of its own window. When no two chosen start
    tokens share a char_start and no two chosen end tokens share a char_end, those are n_best different
    character spans, so the pair cannot reach the example's n-best list; windows where two do share one
    keep all their valid pairs.
    """
    rows, cells = valid.shape
    score = np.where(valid, (start_value[:, :, None] + end_value[:, None, :]).reshape(rows, cells), -np.inf)
    cutoff = np.sort(score, axis=1)[:, cells - n_best, None]
    starts, ends = np.sort(start_char, axis=1), np.sort(end_char, axis=1)  # missing ones: +max, -1
    may_repeat = ((starts[:, 1:] == starts[:, :-1]) & (starts[:, 1:] != np.iinfo(np.int64).max)).any(axis=1)
    may_repeat |= ((ends[:, 1:] == ends[:, :-1]) & (ends[:, 1:] >= 0)).any(axis=1)
    return valid & ((score >= cutoff) | may_repeat[:, None])


# ---- Per example: pool, de-duplicate, rank (rules 3 and 4) ----------------------------------------


def rank_candidates(
    window,
    char_start,
    char_end,
    start_logit,
    end_logit,
    feature_example: np.ndarray,
    context_lengths: np.ndarray,
    null_scores: np.ndarray | None,
    n_best: int,
) -> tuple[list[int], RankedSpans]:
    """All examples' n-best spans as columns, example e's at `bounds[e]:bounds[e + 1]`."""
    num_examples = len(context_lengths)
    example, score = feature_example[window], start_logit + end_logit
    # One key per (example, character span): example e owns the keys base[e] ... base[e] + side[e]² - 1.
    side = context_lengths + 1
    base = np.cumsum(side * side) - side * side
    if num_examples and base[-1] + side[-1] ** 2 > 2**53:  # keys must be exact as float64
        raise ValueError("contexts too long: the sum of their squared lengths must stay below 2**53")
    key = base[example] + char_start * side[example] + char_end
    # A stable sort by (key, score descending), as complex numbers (numpy orders them by real, then
    # imaginary part): the first candidate of every key is its best and, on equal scores, its earliest.
    order = np.argsort(key - 1j * score, kind="stable")
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order[1:]] != key[order[:-1]]
    unique = order[first]  # by example, char_start, char_end
    # A stable sort by (example, score descending): equal scores stay in (char_start, char_end) order.
    ranked = unique[np.argsort(example[unique] - 1j * score[unique], kind="stable")]
    counts = np.bincount(example[ranked], minlength=num_examples)
    kept = ranked[np.arange(len(ranked)) - (np.cumsum(counts) - counts)[example[ranked]] < n_best]
    bounds = np.concatenate(([0], np.cumsum(np.minimum(counts, n_best))))

    # Softmax per example (with the null score in SQuAD 2.0 mode); an example's first score is its best.
    kept_example, kept_score = example[kept], score[kept]
    null = null_scores[kept_example] if null_scores is not None else np.full(len(kept), -np.inf)
    top = np.maximum(kept_score[bounds[kept_example]], null)
    weights = np.exp(kept_score - top)
    total = np.bincount(kept_example, weights=weights, minlength=num_examples)[kept_example] + np.exp(null - top)

    columns = RankedSpans(
        example=kept_example,
        char_start=char_start[kept],
        char_end=char_end[kept],
        score=kept_score,
        probability=weights / total,
        start_logit=start_logit[kept],
        end_logit=end_logit[kept],
    )
    return bounds.tolist(), columns
