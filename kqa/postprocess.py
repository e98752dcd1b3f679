"""Turn start/end logits of evaluation windows into answer spans of the original contexts.

One example is split into one or more overlapping windows (features). For every window the
post-processor takes the `n_best_size` highest start logits and the `n_best_size` highest end logits
among *context* tokens, forms every start × end pair, drops pairs that end before they start, are
longer than `max_answer_length` tokens or cover no character, and scores a pair as
`start_logit + end_logit`. Candidates of all windows of one example are pooled; a character span found
in several windows is kept once, with its best score. The `n_best_size` best spans form the n-best
list; their text is always a slice of the original context (`context[start:end]`), never detokenised
tokens, so Korean text comes back exactly as given (no "##" pieces, no lost spaces).

All of this is vectorised with numpy over blocks of windows (whole examples per block): no Python loop
runs per window or per start × end pair; Python only builds the final `SpanPrediction` objects.

Ordering is deterministic:
- top-k token selection: higher logit first; equal logits → the lower token index is taken;
- the same character span in several windows (or twice in one window): the highest score wins; equal
  scores → the earlier window, then the lower start token, then the lower end token supplies
  `start_logit`/`end_logit`;
- n-best order: score descending; equal scores → lower character start, then lower character end.

SQuAD 2.0 style (``version_2_with_negative``): each window's null score is
`start_logit[cls] + end_logit[cls]` (cls = the feature's `cls_index` column when present, else token 0);
the example's null score is the minimum over its windows. The prediction is "" when
`null_score - best_span_score > null_score_diff_threshold`. Probabilities are a softmax over the
n-best scores together with the null score, so in that mode they sum to `1 - P(null)`.

Examples without any window, or whose windows hold no valid span, get the text "" and an empty n-best
list; they are counted in `PostprocessReport` and logged (logger ``kqa.postprocess``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger("kqa.postprocess")

# Windows are processed in blocks of whole examples holding about this many token positions: small
# enough for the work arrays to stay in cache, large enough to amortise numpy's per-call overhead.
_BLOCK_POSITIONS = 1 << 18
# Sort keys are packed into one int64 below this bound (else a slower multi-key sort is used).
_PACKED_KEY_LIMIT = 2 ** 62


@dataclass
class PostprocessConfig:
    n_best_size: int = 20
    """How many start and end tokens per window are paired, and how many spans the n-best list keeps."""
    max_answer_length: int = 30
    """Longest answer, in tokens (end - start + 1)."""
    version_2_with_negative: bool = False
    """SQuAD 2.0 style: the model may answer "" (no answer) via the CLS token's score."""
    null_score_diff_threshold: float = 0.0
    """Predict "" when null_score - best_span_score is greater than this."""

    def __post_init__(self) -> None:
        if int(self.n_best_size) < 1:
            raise ValueError(f"n_best_size must be >= 1, got {self.n_best_size}")
        if int(self.max_answer_length) < 1:
            raise ValueError(f"max_answer_length must be >= 1, got {self.max_answer_length}")


@dataclass(slots=True)
class SpanPrediction:
    """One candidate answer: `context[start:end] == text` (character offsets, end exclusive)."""

    text: str
    start: int
    end: int
    score: float
    """start_logit + end_logit."""
    probability: float
    """Softmax over the example's n-best scores (and its null score in SQuAD 2.0 mode)."""
    start_logit: float
    end_logit: float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "score": self.score,
                "probability": self.probability, "start_logit": self.start_logit, "end_logit": self.end_logit}


@dataclass
class ExamplePrediction:
    """The answer to one example: the best span (or "" when none / null) and the n-best list."""

    id: str
    text: str
    """The best span's text; "" when the null answer was chosen or no valid span exists."""
    start: int
    end: int
    """Character offsets of `text` in the context (0, 0 when `text` is "")."""
    score: float
    """The best span's score; the null score when null was chosen; -inf when there is no span at all."""
    nbest: list[SpanPrediction] = field(default_factory=list)
    null_score: float | None = None
    """Minimum CLS score over the example's windows (SQuAD 2.0 mode only, else None)."""

    @property
    def null_odds(self) -> float:
        """null_score - best span score: inf when there is no span, -inf when there is no null score."""
        if not self.nbest:
            return math.inf
        return -math.inf if self.null_score is None else self.null_score - self.nbest[0].score


@dataclass
class PostprocessReport:
    """What happened to every example; nothing is dropped without being counted here."""

    num_examples: int = 0
    num_features: int = 0
    examples_without_features: int = 0
    """Examples that no window belongs to (answered "")."""
    examples_without_span: int = 0
    """Examples with windows but no valid span in any of them (answered "")."""
    null_answers: int = 0
    """SQuAD 2.0 mode: examples answered "" because the null score won."""
    examples_without_features_ids: list[str] = field(default_factory=list)
    examples_without_span_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"post-processed {self.num_examples} examples from {self.num_features} windows: "
                f"{self.examples_without_features} without any window, "
                f"{self.examples_without_span} without a valid span")
        return text + (f", {self.null_answers} answered null" if self.null_answers else "")


# --------------------------------------------------------------------------------------------------
# Input columns
# --------------------------------------------------------------------------------------------------

class _Columns:
    """Reads named columns of a `datasets.Dataset` (straight from Arrow, one formatting call for all
    of them, respecting select/shard index mappings) or of a list of dict rows."""

    def __init__(self, data: Any, names: Sequence[str], what: str, *, optional: Sequence[str] = ()):
        self.what = what
        self.is_dataset = hasattr(data, "with_format") and hasattr(data, "column_names")
        if self.is_dataset:
            missing = [n for n in names if n not in data.column_names]
            if missing:
                raise ValueError(f"{what} have no {missing[0]!r} column (columns: {data.column_names})")
            present = list(names) + [n for n in optional if n in data.column_names]
            view = data.with_format("arrow", columns=present)
            self.arrow = {n: view[n] for n in present}
        else:
            self.rows = data
            for i, row in enumerate(data):
                for name in names:
                    if name not in row:
                        raise ValueError(f"{what} row {i} has no {name!r} key")
            self.arrow = None
            present = list(names) + [n for n in optional if len(data) and all(n in row for row in data)]
        self.present = set(present)

    def has(self, name: str) -> bool:
        return name in self.present

    def list(self, name: str) -> list:
        if self.arrow is not None:
            return self.arrow[name].to_pylist()
        return [row[name] for row in self.rows]

    def labels(self, name: str) -> Sequence[str]:
        """A column's values as strings for messages, read one at a time (only errors need them)."""
        if self.arrow is not None:
            return _ArrowLabels(self.arrow[name])
        return [str(row[name]) for row in self.rows]

    def index_in(self, name: str, ids: list[str], index: dict[str, int]) -> np.ndarray:
        """For every row, the position of its `name` value in `ids` (an error names the first row
        whose value is missing)."""
        import pyarrow as pa

        column = self.arrow[name] if self.arrow is not None else None
        if column is not None and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            import pyarrow.compute as pc

            positions = pc.index_in(column, value_set=pa.array(ids, type=column.type))
            if positions.null_count == 0:
                return positions.to_numpy(zero_copy_only=False).astype(np.int64)
            values = [str(v) for v in column.to_pylist()]
        else:
            values = [str(v) for v in (column.to_pylist() if column is not None else self.list(name))]
        try:
            return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
        except KeyError:
            f = next(f for f, v in enumerate(values) if v not in index)
            raise ValueError(f"{self.what}: window {f} belongs to example {values[f]!r}, "
                             f"which is not among the examples") from None

    def offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """All windows' offset_mapping as one `[num_tokens, 2]` int64 array plus `row_starts`
        (`[num_features + 1]`). `None` offsets (the Hugging Face examples' marker) read as [-1, -1]."""
        if self.arrow is not None:
            flat = _arrow_offsets(self.arrow["offset_mapping"])
            if flat is not None:
                return flat
        return _list_offsets(self.list("offset_mapping"))


class _ArrowLabels:
    """Arrow column values as strings, decoded one at a time on request."""

    def __init__(self, column: Any):
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, i: int) -> str:
        return str(self.column[int(i)].as_py())


def _list_offsets(mappings: list) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(m) for m in mappings), dtype=np.int64, count=len(mappings))
    row_starts = np.zeros(len(mappings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_starts[1:])
    if not row_starts[-1]:
        return np.zeros((0, 2), dtype=np.int64), row_starts
    try:
        # C-level passes over all pairs and integers. Anything irregular (None markers, pairs that are
        # not pairs) falls through to the per-window path below, which also names the window at fault.
        # Every pair has at most 2 values and they add up to 2 per pair, so every pair has exactly 2.
        if max(map(len, chain.from_iterable(mappings))) == 2:
            values = chain.from_iterable(chain.from_iterable(mappings))
            flat = np.fromiter(values, dtype=np.int64, count=2 * int(row_starts[-1]))
            if next(values, None) is None:
                return flat.reshape(-1, 2), row_starts
    except (TypeError, ValueError):
        pass
    parts = []
    for f, mapping in enumerate(mappings):
        if not len(mapping):
            continue
        try:
            part = np.asarray([(-1, -1) if pair is None else pair for pair in mapping], dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"features: window {f} offset_mapping is not a list of [start, end] "
                             f"integer pairs ({err})") from None
        if part.ndim != 2 or part.shape[1] != 2:
            raise ValueError(f"features: window {f} offset_mapping is not a list of [start, end] pairs "
                             f"(shape {part.shape})")
        parts.append(part)
    return np.concatenate(parts), row_starts


def _arrow_offsets(column: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """`Columns.offsets` from Arrow buffers, without per-token Python objects (None when the column
    holds nulls, which the list path handles)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    values, lengths = [], []
    for chunk in chunks:
        if not (pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)) or chunk.null_count:
            return None
        tokens = chunk.flatten()
        if tokens.null_count:
            return None  # None markers inside windows: the generic path reads them as [-1, -1]
        if pa.types.is_fixed_size_list(tokens.type):
            if tokens.type.list_size != 2:
                raise ValueError(f"features: offset_mapping entries have {tokens.type.list_size} values, not 2")
        else:
            bounds = tokens.offsets.to_numpy(zero_copy_only=False)
            if (bounds[-1] - bounds[0] != 2 * len(tokens)) or (np.diff(bounds) != 2).any():
                raise ValueError("features: an offset_mapping entry is not a [start, end] pair")
        pairs = tokens.flatten()
        if pairs.null_count:
            return None
        values.append(pairs.to_numpy(zero_copy_only=False))
        lengths.append(np.diff(chunk.offsets.to_numpy(zero_copy_only=False)))
    if not values:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(1, dtype=np.int64)
    offsets = (np.concatenate(values) if len(values) != 1 else values[0]).astype(np.int64, copy=False)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    row_starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_starts[1:])
    return offsets.reshape(-1, 2), row_starts


# --------------------------------------------------------------------------------------------------
# Windows: layout, validation
# --------------------------------------------------------------------------------------------------

@dataclass
class _Windows:
    """Every window's offsets in flat (CSR) form plus where its context tokens lie."""

    char_start: np.ndarray
    char_end: np.ndarray
    """[num_tokens] character offsets of every token of every window; negative for non-context tokens."""
    is_context: np.ndarray
    """[num_tokens] char_start >= 0."""
    row_starts: np.ndarray
    """[num_features + 1]: window f owns tokens row_starts[f]:row_starts[f+1]."""
    lengths: np.ndarray
    first_context: np.ndarray
    """Index of the window's first context token (0 when it has none)."""
    last_context: np.ndarray
    """Index of its last context token (-1 when it has none)."""
    context_count: np.ndarray
    """How many context tokens the window has."""
    contiguous: np.ndarray
    """True when the window's context tokens are consecutive (the usual question-then-context layout)."""


def _layout(offsets: np.ndarray, row_starts: np.ndarray) -> _Windows:
    """Where every window's context tokens lie, from the few positions where the context status of
    consecutive tokens changes (one pass over the tokens; no per-token index arrays)."""
    char_start, char_end = offsets[:, 0], offsets[:, 1]  # strided views: no copies of the big arrays
    lengths = np.diff(row_starts)
    num_tokens, num_windows = len(char_start), len(lengths)
    is_context = char_start >= 0
    # Runs of consecutive context tokens (over all windows at once): [run_start, run_end).
    change = np.flatnonzero(is_context[1:] != is_context[:-1]) + 1
    edges = np.concatenate(([0], change, [num_tokens])) if num_tokens else np.zeros(1, dtype=np.int64)
    run_is_context = is_context[edges[:-1]] if num_tokens else np.zeros(0, dtype=bool)
    run_start, run_end = edges[:-1][run_is_context], edges[1:][run_is_context]
    before = np.concatenate(([0], np.cumsum(run_end - run_start)))

    def context_before(p: np.ndarray) -> np.ndarray:
        """How many context tokens lie before each position p: the runs before the last run starting
        at or before p, plus that run's part before p."""
        i = np.searchsorted(run_start, p, side="right")
        j = np.maximum(i - 1, 0)
        return np.where(i > 0, before[j] + np.minimum(p, run_end[j]) - run_start[j], 0)

    window_start, window_end = row_starts[:-1], row_starts[1:]
    if len(run_start):
        count = context_before(window_end) - context_before(window_start)
    else:
        count = np.zeros(num_windows, dtype=np.int64)
    has = count > 0
    first = np.zeros(num_windows, dtype=np.int64)
    last = np.full(num_windows, -1, dtype=np.int64)
    if has.any():
        a, b = window_start[has], window_end[has]
        # The first run ending after a starts the window's context; the last run starting before b ends it.
        first_run = np.searchsorted(run_end, a, side="right")
        last_run = np.searchsorted(run_start, b, side="left") - 1
        first[has] = np.maximum(run_start[first_run], a) - a
        last[has] = np.minimum(run_end[last_run], b) - 1 - a
    return _Windows(char_start, char_end, is_context, row_starts, lengths, first, last, count,
                    contiguous=(last - first + 1) == count)


def _check_offsets(windows: _Windows, feature_example: np.ndarray, context_lengths: np.ndarray,
                   feature_ids: Sequence[str]) -> None:
    """Context tokens (start >= 0) need start <= end <= len(context); a negative start marks a
    non-context token."""
    char_start, char_end, row_starts = windows.char_start, windows.char_end, windows.row_starts
    bad = char_end < char_start
    bad &= windows.is_context
    nonempty = np.flatnonzero(windows.lengths > 0)
    if len(nonempty):
        max_end = np.maximum.reduceat(char_end, row_starts[nonempty])
        too_far = max_end > context_lengths[feature_example[nonempty]]
        if too_far.any():
            f = int(nonempty[np.argmax(too_far)])
            bad[row_starts[f] + int(np.argmax(char_end[row_starts[f]:row_starts[f + 1]]))] = True
    if bad.any():
        t = int(np.argmax(bad))
        f = int(np.searchsorted(row_starts, t, side="right") - 1)
        raise ValueError(
            f"features: window {f} (example {feature_ids[f]!r}) token {t - int(row_starts[f])} has offsets "
            f"{[int(char_start[t]), int(char_end[t])]}, not a span of its context (length "
            f"{int(context_lengths[feature_example[f]])}): context tokens need 0 <= start <= end <= "
            f"len(context), other tokens [-1, -1]"
        )


def _check_logits(start_logits: Any, end_logits: Any, num_features: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(start_logits)
    end = np.asarray(end_logits)
    for name, arr in (("start_logits", start), ("end_logits", end)):
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a [num_features, seq_len] array, got shape {arr.shape}")
        if arr.shape[0] != num_features:
            raise ValueError(f"{name} has {arr.shape[0]} rows but there are {num_features} features")
        if arr.shape[1] < max_len:
            raise ValueError(f"{name} has {arr.shape[1]} positions but a feature has {max_len} tokens")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must be floating point, got {arr.dtype}")
    return start, end


# --------------------------------------------------------------------------------------------------
# Per-window candidates (vectorised over a block of windows)
# --------------------------------------------------------------------------------------------------

def _top_k_tokens(masked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indices of the k largest finite values in ascending order, `[rows, k]` (rows with
    fewer than k finite values are padded with -1 at the front), and each row's maximum.

    Ties at the k-th value go to the lower indices, so the choice is deterministic (argpartition alone
    picks among equal values arbitrarily, and bfloat16-born logits tie often). The common case costs
    one SIMD sort of the values per row; rows with ties at the cut or few finite values take a
    stable argsort.
    """
    rows, width = masked.shape
    if k >= width:
        chosen = np.broadcast_to(np.arange(width), (rows, width))
        return np.sort(np.where(np.isfinite(masked), chosen, -1), axis=1), masked.max(axis=1)
    ordered = np.sort(masked, axis=1)
    kth = ordered[:, width - k]
    take = masked >= kth[:, None]
    # Exactly k values reach the k-th largest unless the next one down ties with it.
    exact = (ordered[:, width - k - 1] < kth) & np.isfinite(kth)
    if exact.all():
        return (np.flatnonzero(take) % width).reshape(rows, k), ordered[:, -1]
    chosen = np.empty((rows, k), dtype=np.int64)
    take[~exact] = False
    chosen[exact] = (np.flatnonzero(take) % width).reshape(-1, k)
    slow = np.flatnonzero(~exact)
    sub = masked[slow]
    picked = np.argsort(-sub, axis=1, kind="stable")[:, :k]
    finite = np.isfinite(np.take_along_axis(sub, picked, axis=1))
    chosen[slow] = np.sort(np.where(finite, picked, -1), axis=1)
    return chosen, ordered[:, -1]


def _has_repeats(values: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per row: do two usable entries share a value?"""
    # Unusable entries get distinct negative stand-ins so that they never match anything.
    stand_in = -1 - np.arange(values.shape[1])
    ordered = np.sort(np.where(usable, values, stand_in), axis=1)
    return (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)


@dataclass
class _Candidates:
    """Flat arrays, one entry per candidate span of a block, in (window, start token, end token) order."""

    row: np.ndarray
    """The window's row in its block."""
    char_start: np.ndarray
    char_end: np.ndarray
    start_logit: np.ndarray
    end_logit: np.ndarray

    def select(self, keep: np.ndarray) -> "_Candidates":
        return _Candidates(self.row[keep], self.char_start[keep], self.char_end[keep],
                           self.start_logit[keep], self.end_logit[keep])


def _context_columns(windows: _Windows, rows: np.ndarray) -> tuple[int, int]:
    """The token positions [lo, hi) that hold any context token in these windows: columns outside
    (the question, special tokens, padding) need no work."""
    has = windows.context_count[rows] > 0
    if not has.any():
        return 0, 1
    return int(windows.first_context[rows][has].min()), int(windows.last_context[rows][has].max()) + 1


def _context_mask(windows: _Windows, rows: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """[len(rows), hi - lo] bool: which of the positions lo..hi-1 of each window hold context tokens."""
    first, count = windows.first_context[rows], windows.context_count[rows]
    if windows.contiguous[rows].all():
        # first <= position < first + count as one unsigned comparison of (position - first).
        signed, unsigned = (np.int16, np.uint16) if hi < 2 ** 15 else (np.int64, np.uint64)
        position = np.arange(lo, hi, dtype=signed)
        return (position - first.astype(signed)[:, None]).view(unsigned) < count.astype(unsigned)[:, None]
    lengths = windows.lengths[rows]
    token_row = np.repeat(np.arange(len(rows)), lengths)
    token_pos = np.arange(len(token_row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    is_context = np.zeros((len(rows), max(int(lengths.max()), hi)), dtype=bool)
    is_context[token_row, token_pos] = windows.is_context[windows.row_starts[rows][token_row] + token_pos]
    return is_context[:, lo:hi]


def _window_candidates(start_logits: np.ndarray, end_logits: np.ndarray, windows: _Windows, rows: np.ndarray,
                       feature_ids: Sequence[str], n_best_size: int, max_answer_length: int) -> _Candidates:
    """Valid spans of the windows `rows` (logits given as `[len(rows), >= width]`), pruned to what can
    still reach an example's n-best list.

    Pruning (only in windows with more than 2 × n_best_size valid spans, where it pays) keeps every
    valid span scoring at least the window's n_best_size-th best score. That is exact: a span left out
    is beaten by n_best_size different spans of its own window, so it cannot be in the example's
    n-best. "Different" needs two selected start tokens (or end tokens) never to share a character
    boundary; windows where they do keep all their valid spans.
    """
    num_rows = len(rows)
    # Work on the columns lo..hi-1 only; token indices below are relative to lo.
    lo, hi = _context_columns(windows, rows)
    width = hi - lo
    is_context = _context_mask(windows, rows, lo, hi)
    k = min(n_best_size, width)
    base = windows.row_starts[rows][:, None] + lo
    picked = []
    for name, logits, char_column in (("start", start_logits, windows.char_start),
                                      ("end", end_logits, windows.char_end)):
        block = logits[:, lo:hi]
        if block.dtype != np.float64:
            block = block.astype(np.float32, copy=False)
        masked = np.where(is_context, block, block.dtype.type(-np.inf))
        tokens, row_max = _top_k_tokens(masked, k)
        # NaN and +inf would sort above every real logit; a context token's -inf simply never wins.
        broken = np.isnan(row_max) | (row_max == np.inf)
        if broken.any():
            r = int(np.argmax(broken))
            raise ValueError(f"window {int(rows[r])} (example {feature_ids[rows[r]]!r}): {name} logits hold "
                             f"{row_max[r]} at a context token (logits must be finite)")
        safe = np.maximum(tokens, 0)
        values = np.take_along_axis(block, safe, axis=1).astype(np.float64)
        picked.append((tokens, values, char_column[base + safe]))
    (start_idx, start_val, start_char), (end_idx, end_val, end_char) = picked

    # The k × k grid of (start, end) pairs, flattened: cell = (row * k + a) * k + b. A pair is valid
    # when 0 <= end - start < max_answer_length: one unsigned comparison. Padded (-1) slots get
    # sentinels that fail it with every partner; the narrowest integer type that holds them is used.
    signed, unsigned = (np.int16, np.uint16) if width < 2 ** 13 else (np.int64, np.uint64)
    no_start = 2 ** 14 if signed is np.int16 else 2 ** 40
    start_key = np.where(start_idx < 0, no_start, start_idx).astype(signed)
    end_key = np.where(end_idx < 0, -no_start, end_idx).astype(signed)
    span_minus_one = end_key[:, None, :] - start_key[:, :, None]
    valid = (span_minus_one.view(unsigned) < min(max_answer_length, width)).reshape(num_rows, k * k)

    if k * k > 2 * n_best_size:
        crowded = np.flatnonzero(np.count_nonzero(valid, axis=1) > 2 * n_best_size)
        if len(crowded):
            valid[crowded] = _prune(valid[crowded], start_idx[crowded], end_idx[crowded], start_val[crowded],
                                    end_val[crowded], start_char[crowded], end_char[crowded], k, n_best_size)

    cells = np.flatnonzero(valid)
    start_at, b = np.divmod(cells, k)       # start_at = row * k + a
    end_at = start_at - start_at % k + b    # row * k + b
    candidates = _Candidates(cells // (k * k), start_char.ravel()[start_at], end_char.ravel()[end_at],
                             start_val.ravel()[start_at], end_val.ravel()[end_at])
    covers_text = candidates.char_end > candidates.char_start
    return candidates if covers_text.all() else candidates.select(covers_text)


def _prune(valid: np.ndarray, start_idx: np.ndarray, end_idx: np.ndarray, start_val: np.ndarray,
           end_val: np.ndarray, start_char: np.ndarray, end_char: np.ndarray, k: int, n_best_size: int) -> np.ndarray:
    """`valid` restricted to spans scoring at least each window's n_best_size-th best (see above)."""
    rows = len(valid)
    score = np.where(valid, (start_val[:, :, None] + end_val[:, None, :]).reshape(rows, k * k), -np.inf)
    cutoff = np.sort(score, axis=1)[:, k * k - n_best_size, None]  # SIMD sort beats partition here
    may_repeat = _has_repeats(start_char, start_idx >= 0) | _has_repeats(end_char, end_idx >= 0)
    return valid & ((score >= cutoff) | may_repeat[:, None])


# --------------------------------------------------------------------------------------------------
# Per-example n-best (vectorised over the examples of a block)
# --------------------------------------------------------------------------------------------------

@dataclass
class _NBest:
    """The kept n-best spans of a block's examples, grouped by example (`bounds[e]:bounds[e+1]`)."""

    bounds: list[int]
    char_start: list[int]
    char_end: list[int]
    score: list[float]
    probability: list[float]
    start_logit: list[float]
    end_logit: list[float]


def _first_per_group(values: np.ndarray) -> np.ndarray:
    """Mask of the first entry of every run of equal values."""
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return first


def _merge_repeats(candidates: _Candidates, example: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of one candidate per (example, char_start, char_end), in that order: the best score;
    among equal best scores the earliest candidate (window, start token, end token order)."""
    bound = int(candidates.char_end.max()) + 1
    if (int(example.max()) + 1) * bound * bound < _PACKED_KEY_LIMIT:
        key = (example * bound + candidates.char_start) * bound + candidates.char_end
        # Stable, so equal keys keep candidate order; each window's spans already come sorted by key,
        # which the run-detecting stable sort exploits.
        order = np.argsort(key, kind="stable")
        first = _first_per_group(key[order])
    else:
        order = np.lexsort((candidates.char_end, candidates.char_start, example))
        first = (_first_per_group(example[order]) | _first_per_group(candidates.char_start[order])
                 | _first_per_group(candidates.char_end[order]))
    if first.all():
        return order
    group = np.cumsum(first) - 1
    ordered_score = score[order]
    best = np.maximum.reduceat(ordered_score, np.flatnonzero(first))
    reaching = np.flatnonzero(ordered_score == best[group])
    return order[reaching[_first_per_group(group[reaching])]]


def _rank_by_score(example: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Order of entries by (example, score descending, position): entries arrive sorted by example."""
    num = len(score)
    position = np.arange(num)
    # One float key orders example-major and score-descending at once (examples are `spread` apart,
    # more than any score difference). Rounding can only disturb nearly equal scores, and the unstable
    # sort leaves equal scores unordered, so the result is checked exactly and such examples re-sorted.
    spread = 2.0 * float(np.abs(score).max()) + 1.0
    order = np.argsort(example * spread - score)
    ex_o, sc_o, pos_o = example[order], score[order], order
    same = ex_o[1:] == ex_o[:-1]
    if (ex_o[1:] < ex_o[:-1]).any():  # cannot happen with a finite spread; kept as a safety net
        return np.lexsort((position, -score, example))
    ordered = ~same | (sc_o[:-1] > sc_o[1:]) | ((sc_o[:-1] == sc_o[1:]) & (pos_o[:-1] < pos_o[1:]))
    if not ordered.all():
        broken = np.zeros(int(example.max()) + 1, dtype=bool)
        broken[ex_o[1:][~ordered]] = True
        where = np.flatnonzero(broken[ex_o])
        sub = order[where]
        order[where] = sub[np.lexsort((position[sub], -score[sub], example[sub]))]
    return order


def _rank_nbest(candidates: _Candidates, row_example: np.ndarray, num_examples: int, n_best: int,
                null_scores: np.ndarray | None) -> _NBest:
    """Merge repeated character spans, sort by score, keep n_best per example, add probabilities.

    `row_example` maps a candidate's row to its example (0..num_examples-1, rows grouped by example).
    """
    if len(candidates.row) == 0:
        empty: list = []
        return _NBest([0] * (num_examples + 1), empty, empty, empty, empty, empty, empty)
    example = row_example[candidates.row]
    score = candidates.start_logit + candidates.end_logit

    unique = _merge_repeats(candidates, example, score)
    ex_u, sc_u = example[unique], score[unique]
    ranked = _rank_by_score(ex_u, sc_u)
    ex_r = ex_u[ranked]
    first_of_example = np.zeros(num_examples + 1, dtype=np.int64)
    np.cumsum(np.bincount(ex_r, minlength=num_examples), out=first_of_example[1:])
    keep = np.arange(len(ranked)) - first_of_example[ex_r] < n_best
    kept = unique[ranked[keep]]
    ex_k, sc_k = ex_r[keep], sc_u[ranked[keep]]
    bounds = np.zeros(num_examples + 1, dtype=np.int64)
    np.cumsum(np.bincount(ex_k, minlength=num_examples), out=bounds[1:])

    # Softmax within each example (with the null score in SQuAD 2.0 mode). Scores are sorted, so an
    # example's first entry is its maximum.
    group_max = sc_k[bounds[:-1][ex_k]]
    if null_scores is not None:
        null_k = np.nan_to_num(null_scores[ex_k], nan=-np.inf)  # no window → no null mass
        group_max = np.maximum(group_max, null_k)
    weights = np.exp(sc_k - group_max)
    total = np.bincount(ex_k, weights=weights, minlength=num_examples)[ex_k]
    if null_scores is not None:
        total = total + np.exp(null_k - group_max)

    return _NBest(bounds=bounds.tolist(), char_start=candidates.char_start[kept].tolist(),
                  char_end=candidates.char_end[kept].tolist(), score=sc_k.tolist(),
                  probability=(weights / total).tolist(), start_logit=candidates.start_logit[kept].tolist(),
                  end_logit=candidates.end_logit[kept].tolist())


def _window_null_scores(cls_index: list | None, start_all: np.ndarray, end_all: np.ndarray,
                        lengths: np.ndarray) -> np.ndarray:
    """start_logit[cls] + end_logit[cls] per window (cls = the `cls_index` column, else token 0)."""
    num_features = len(lengths)
    if cls_index is not None:
        cls = np.asarray(cls_index, dtype=np.int64)
        outside = (cls < 0) | (cls >= lengths)
        if outside.any():
            f = int(np.argmax(outside))
            raise ValueError(f"features: window {f} has cls_index {int(cls[f])} outside its {int(lengths[f])} tokens")
    else:
        cls = np.zeros(num_features, dtype=np.int64)
    rows = np.arange(num_features)
    null = start_all[rows, cls].astype(np.float64) + end_all[rows, cls].astype(np.float64)
    if not np.isfinite(null).all():
        f = int(np.argmax(~np.isfinite(null)))
        raise ValueError(f"window {f}: the null (CLS) score is {null[f]} (logits must be finite)")
    return null


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def postprocess_predictions(examples: Any, features: Any, start_logits: np.ndarray, end_logits: np.ndarray,
                            config: PostprocessConfig | None = None) -> dict[str, ExamplePrediction]:
    """Best span and n-best list for every example, keyed by id in the examples' order.

    `examples`: `datasets.Dataset` or list of rows with `id` and `context`. `features`: the same with
    `example_id` and `offset_mapping` (`[-1, -1]` for non-context tokens) and optionally `cls_index`.
    Logits: `[num_features, L]` arrays (float16/32/64), L at least every feature's token count;
    positions past a feature's length are ignored. `config` defaults to `PostprocessConfig()`.
    Counts of examples answered "" are logged (`postprocess_with_report` also returns them).
    """
    predictions, _ = postprocess_with_report(examples, features, start_logits, end_logits, config)
    return predictions


def postprocess_with_report(examples: Any, features: Any, start_logits: np.ndarray, end_logits: np.ndarray,
                            config: PostprocessConfig | None = None,
                            ) -> tuple[dict[str, ExamplePrediction], PostprocessReport]:
    """`postprocess_predictions` that also returns the `PostprocessReport`."""
    config = config or PostprocessConfig()
    example_columns = _Columns(examples, ["id", "context"], "examples")
    ids = [str(i) for i in example_columns.list("id")]
    contexts = example_columns.list("context")
    example_index: dict[str, int] = {}
    for i, example_id in enumerate(ids):
        if example_id in example_index:
            raise ValueError(f"examples: id {example_id!r} appears twice (rows {example_index[example_id]} and {i})")
        if not isinstance(contexts[i], str):
            raise ValueError(f"examples: row {i} (id {example_id!r}) has a context of type "
                             f"{type(contexts[i]).__name__}")
        example_index[example_id] = i
    num_examples = len(ids)

    feature_columns = _Columns(features, ["example_id", "offset_mapping"], "features", optional=["cls_index"])
    feature_ids = feature_columns.labels("example_id")
    feature_example = feature_columns.index_in("example_id", ids, example_index)
    num_features = len(feature_example)

    report = PostprocessReport(num_examples=num_examples, num_features=num_features)
    found: list[ExamplePrediction | None] = [None] * num_examples
    if not num_features:
        _check_logits(start_logits, end_logits, 0, 0)
    else:
        windows = _layout(*feature_columns.offsets())
        if len(windows.lengths) != num_features:
            raise ValueError(f"features: {len(windows.lengths)} offset mappings for {num_features} windows")
        context_lengths = np.fromiter((len(c) for c in contexts), dtype=np.int64, count=num_examples)
        _check_offsets(windows, feature_example, context_lengths, feature_ids)
        start_all, end_all = _check_logits(start_logits, end_logits, num_features, int(windows.lengths.max()))
        window_null = None
        if config.version_2_with_negative:
            cls_index = feature_columns.list("cls_index") if feature_columns.has("cls_index") else None
            window_null = _window_null_scores(cls_index, start_all, end_all, windows.lengths)
        for rows in _example_blocks(feature_example, windows.lengths):
            _process_block(rows, start_all, end_all, windows, feature_example, feature_ids, window_null, ids,
                           contexts, config, found, report)

    predictions: dict[str, ExamplePrediction] = {}
    for e, example_id in enumerate(ids):
        prediction = found[e]
        if prediction is None:  # no window belongs to this example
            report.examples_without_features += 1
            report.examples_without_features_ids.append(example_id)
            prediction = ExamplePrediction(example_id, "", 0, 0, -math.inf, [], None)
        predictions[example_id] = prediction

    logger.info("%s", report.summary())
    if report.examples_without_features or report.examples_without_span:
        logger.warning(
            "%d examples have no window and %d have no valid span; they are answered \"\" (first ids: %s)",
            report.examples_without_features, report.examples_without_span,
            (report.examples_without_features_ids + report.examples_without_span_ids)[:5],
        )
    return predictions, report


def _example_blocks(feature_example: np.ndarray, lengths: np.ndarray):
    """Feature indices in blocks of whole examples (features grouped by example, examples in order)."""
    if len(feature_example) > 1 and (np.diff(feature_example) < 0).any():
        order = np.argsort(feature_example, kind="stable")
    else:
        order = np.arange(len(feature_example))
    sorted_example = feature_example[order]
    rows_per_block = max(1, _BLOCK_POSITIONS // max(int(lengths.max()), 1))
    lo = 0
    while lo < len(order):
        hi = min(lo + rows_per_block, len(order))
        # Extend to the end of the last example so no example is split between blocks.
        hi = int(np.searchsorted(sorted_example, sorted_example[hi - 1], side="right"))
        yield order[lo:hi]
        lo = hi


def _process_block(rows: np.ndarray, start_all: np.ndarray, end_all: np.ndarray, windows: _Windows,
                   feature_example: np.ndarray, feature_ids: Sequence[str], window_null: np.ndarray | None,
                   ids: list[str], contexts: list[str], config: PostprocessConfig,
                   found: list[ExamplePrediction | None], report: PostprocessReport) -> None:
    """Candidates → n-best → `ExamplePrediction`s for the examples of one block of windows."""
    contiguous_rows = rows[-1] - rows[0] + 1 == len(rows) and (np.diff(rows) == 1).all()
    if contiguous_rows:  # the usual case: plain slices, no copies of the logits
        start_block, end_block = start_all[rows[0]:rows[-1] + 1], end_all[rows[0]:rows[-1] + 1]
    else:
        start_block, end_block = start_all[rows], end_all[rows]
    candidates = _window_candidates(start_block, end_block, windows, rows, feature_ids,
                                    config.n_best_size, config.max_answer_length)

    # Examples of this block, numbered locally 0..m-1 (rows are grouped by example).
    row_global = feature_example[rows]
    starts_of_example = np.flatnonzero(_first_per_group(row_global))
    block_examples = row_global[starts_of_example]
    row_example = np.cumsum(_first_per_group(row_global)) - 1
    null_scores = None
    if window_null is not None:
        null_scores = np.minimum.reduceat(window_null[rows], starts_of_example)
    nbest = _rank_nbest(candidates, row_example, len(block_examples), config.n_best_size, null_scores)
    bounds = nbest.bounds
    # All spans of the block at once (one map call), then sliced per example.
    span_example = np.repeat(block_examples, np.diff(bounds)).tolist()
    texts = [contexts[e][s:t] for e, s, t in zip(span_example, nbest.char_start, nbest.char_end)]
    spans = list(map(SpanPrediction, texts, nbest.char_start, nbest.char_end, nbest.score, nbest.probability,
                     nbest.start_logit, nbest.end_logit))
    threshold = config.null_score_diff_threshold
    nulls = null_scores.tolist() if null_scores is not None else [None] * len(block_examples)
    for local, e in enumerate(block_examples.tolist()):
        lo, hi = bounds[local], bounds[local + 1]
        null_score = nulls[local]
        if lo == hi:
            report.examples_without_span += 1
            report.examples_without_span_ids.append(ids[e])
            score = null_score if null_score is not None else -math.inf
            found[e] = ExamplePrediction(ids[e], "", 0, 0, score, [], null_score)
        elif null_score is not None and null_score - spans[lo].score > threshold:
            report.null_answers += 1
            found[e] = ExamplePrediction(ids[e], "", 0, 0, null_score, spans[lo:hi], null_score)
        else:
            best = spans[lo]
            found[e] = ExamplePrediction(ids[e], best.text, best.start, best.end, best.score, spans[lo:hi],
                                         null_score)


def write_predictions(predictions: Mapping[str, ExamplePrediction], output_dir: str | Path, *,
                      prefix: str = "") -> dict[str, Path]:
    """Write `predictions.json` (id → text, the official submission format), `nbest_predictions.json`
    (id → list of span dicts) and, when any prediction carries a null score, `null_odds.json`
    (id → null_score - best span score; `Infinity` when an example has no span).

    Returns the written paths under the keys "predictions", "nbest" and "null_odds".
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def path(name: str) -> Path:
        return out / (f"{prefix}_{name}" if prefix else name)

    def dump(target: Path, obj: Any) -> None:
        target.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    paths = {"predictions": path("predictions.json"), "nbest": path("nbest_predictions.json")}
    dump(paths["predictions"], {k: p.text for k, p in predictions.items()})
    dump(paths["nbest"], {k: [s.to_dict() for s in p.nbest] for k, p in predictions.items()})
    if any(p.null_score is not None for p in predictions.values()):
        paths["null_odds"] = path("null_odds.json")
        dump(paths["null_odds"], {k: p.null_odds for k, p in predictions.items()})
    return paths
