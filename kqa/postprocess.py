"""Turn start/end logits of evaluation windows into answer spans of the original contexts.

An example is split into one or more overlapping windows (features). The rules, per window:

1. Only context tokens count: `offset_mapping[i][0] >= 0` (`[-1, -1]` or `None` marks the others).
   Take the `n_best_size` highest start logits and the `n_best_size` highest end logits among them;
   equal logits: the lower token index first. A -inf logit is never taken.
2. Pair every chosen start token with every chosen end token. A pair is valid when `start <= end`,
   `end - start + 1 <= max_answer_length` (tokens) and it covers at least one character:
   `offset_mapping[end][1] > offset_mapping[start][0]` (zero-width tokens and non-monotonic offsets
   are allowed; only this rule decides). Its score is `start_logit + end_logit` (float64), its text
   `context[offset_mapping[start][0]:offset_mapping[end][1]]`: a slice of the original context.

Per example:

3. Pool the valid pairs of all its windows. A character span found more than once (in overlapping
   windows, or twice in one window) is kept once, with its best score; on equal best scores the
   earliest window (in the order of `features`), then the lower start token, then the lower end token
   supplies `start_logit` and `end_logit`.
4. Sort by score descending, equal scores by character start, then character end. The first
   `n_best_size` spans are the n-best list, the first of them the answer. `probability` is a softmax
   over the n-best scores.
5. With `answer_boundaries="korean"` every n-best span's edges move off Korean particles
   (`kqa.boundaries`: 「1446년에」 → 「1446년」, offsets still into the given context), and spans that
   become identical merge into the first (best) of them, which keeps its score and logits and takes the
   sum of their probabilities; the list may then be shorter than `n_best_size`.

SQuAD 2.0 (``version_2_with_negative``): a window's null score is `start_logit[c] + end_logit[c]`, `c` its
`cls_index` (a column the features must then have); the example's null score is the minimum over its
windows (a window without tokens has none). The answer is "" when `null_score - best_span_score >
null_score_diff_threshold`; the softmax then includes the null score, so the n-best probabilities sum
to `1 - P(null)`. In either mode, features with a `cls_index` column give every example the same
minimum as `cls_score` (without SQuAD 2.0 it does not compete: a window whose CLS position is outside it
or whose score is not finite then simply has none); retrieve-then-read's answer ranker reads it.

An example without windows, or whose windows hold no valid pair (no context token, no token at all),
is answered "" with an empty n-best list, counted in `PostprocessReport` and logged (logger
``kqa.postprocess``). Bad input raises `ValueError` naming the window and the problem.

Every step is a numpy operation over all windows or all candidates at once; Python runs once per
example and per returned span. The speed-ups, each measured with benchmarks/bench_postprocess.py (see
docs/benchmarks.md): offsets from Arrow buffers or one `np.fromiter` (`_offsets`), top-k by one
`np.sort` per row (`_top_k`), exact pruning (`_prune`), windows in chunks and spans in batches.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from kqa.boundaries import BOUNDARY_MODES, adjust_spans
from kqa.span_search import RankedSpans, rank_candidates, window_candidates

logger = logging.getLogger("kqa.postprocess")

_CHUNK_POSITIONS = 1 << 18  # windows are paired in chunks of about this many token positions
_SPAN_BATCH = 4096  # and SpanPredictions built this many at a time (both: memory, CPU cache)


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
    answer_boundaries: str = "korean"
    """"korean": move every n-best span's edges off Korean particles (`kqa.boundaries`; rule 5 of this
    module's docstring, rule 7 of docs/postprocess_and_metric.md); "off": not."""

    def __post_init__(self) -> None:
        if int(self.n_best_size) < 1:
            raise ValueError(f"n_best_size must be >= 1, got {self.n_best_size}")
        if int(self.max_answer_length) < 1:
            raise ValueError(f"max_answer_length must be >= 1, got {self.max_answer_length}")
        if self.answer_boundaries not in BOUNDARY_MODES:
            hint = ' (YAML reads a bare off as false: write "off")' if isinstance(self.answer_boundaries, bool) else ""
            raise ValueError(
                f"answer_boundaries must be one of {list(BOUNDARY_MODES)}, got {self.answer_boundaries!r}{hint}"
            )


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
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "score": self.score,
            "probability": self.probability,
            "start_logit": self.start_logit,
            "end_logit": self.end_logit,
        }


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
    """SQuAD 2.0 mode: `cls_score`, the null answer's score competing with the spans; else None."""
    cls_score: float | None = None
    """Minimum CLS (null) score over the example's windows, in either mode: how strongly the model says
    the context does not answer (windows are labelled with the CLS token when they hold no answer, with
    or without null answers in the data). None when the features carry no `cls_index`."""

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
        text = (
            f"post-processed {self.num_examples} examples from {self.num_features} windows: "
            f"{self.examples_without_features} without any window, "
            f"{self.examples_without_span} without a valid span"
        )
        return text + (f", {self.null_answers} answered null" if self.null_answers else "")


def decode_answers(
    examples: Any,
    features: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    config: PostprocessConfig | None = None,
) -> dict[str, ExamplePrediction]:
    """Best span and n-best list for every example, keyed by id in the examples' order.

    `examples`: `datasets.Dataset` or list of rows with `id` and `context`. `features`: the same with
    `example_id`, `offset_mapping` (`[-1, -1]` for non-context tokens) and, in
    `version_2_with_negative` mode, `cls_index`. Logits: `[num_features, L]` arrays (float16/32/64), L at
    least every feature's token count; positions past a feature's length are ignored. `config`
    defaults to `PostprocessConfig()`. Counts of examples answered "" are logged
    (`decode_answers_with_report` also returns them).
    """
    predictions, _ = decode_answers_with_report(examples, features, start_logits, end_logits, config)
    return predictions


def decode_answers_with_report(
    examples: Any,
    features: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    config: PostprocessConfig | None = None,
) -> tuple[dict[str, ExamplePrediction], PostprocessReport]:
    """`decode_answers` that also returns the `PostprocessReport`."""
    config = config or PostprocessConfig()
    ids, contexts, example_index = _example_columns(examples)
    num_examples = len(ids)

    with_cls = config.version_2_with_negative or _has_column(features, "cls_index")
    names = ["example_id", "offset_mapping"] + (["cls_index"] if with_cls else [])
    columns = _read_columns(features, names, "features")
    feature_ids = [str(i) for i in columns["example_id"]]
    num_features = len(feature_ids)
    unknown = [f for f, example_id in enumerate(feature_ids) if example_id not in example_index]
    if unknown:
        raise ValueError(
            f"features: window {unknown[0]} belongs to example {feature_ids[unknown[0]]!r}, "
            f"which is not among the examples"
        )
    feature_example = np.fromiter(map(example_index.__getitem__, feature_ids), np.int64, num_features)
    offsets, lengths = _offsets(columns["offset_mapping"])
    row_starts = np.concatenate(([0], np.cumsum(lengths)))
    context_lengths = np.fromiter(map(len, contexts), np.int64, num_examples)
    _check_offsets(offsets, row_starts, context_lengths[feature_example], feature_ids)
    width = int(lengths.max(initial=0))
    start_all, end_all = _check_logits(start_logits, end_logits, num_features, width)
    cls_scores = None
    if with_cls:
        cls_scores = _null_scores(
            columns["cls_index"],
            start_all,
            end_all,
            lengths,
            feature_example,
            num_examples,
            config.version_2_with_negative,
        )
    null_scores = cls_scores if config.version_2_with_negative else None  # the null answer competes

    # Valid pairs of all windows, in (window, start token, end token) order, from chunks of windows.
    step = max(1, _CHUNK_POSITIONS // max(width, 1))
    parts = [
        window_candidates(
            start_all[lo : lo + step],
            end_all[lo : lo + step],
            offsets[row_starts[lo] : row_starts[min(lo + step, num_features)]],
            lengths[lo : lo + step],
            lo,
            feature_ids,
            config.n_best_size,
            config.max_answer_length,
        )
        for lo in range(0, max(num_features, 1), step)
    ]
    candidates = [np.concatenate(column) for column in zip(*parts)]
    bounds, ranked = rank_candidates(*candidates, feature_example, context_lengths, null_scores, config.n_best_size)
    spans = _span_predictions(ranked, contexts)
    if config.answer_boundaries == "korean":
        spans, bounds = adjust_spans(spans, bounds, contexts)
    has_window = np.bincount(feature_example, minlength=num_examples) > 0
    return _choose_answers(ids, bounds, spans, cls_scores, has_window, num_features, config)


def _span_predictions(ranked: RankedSpans, contexts: list[str]) -> list[SpanPrediction]:
    """The SpanPrediction objects, in batches (their inputs then stay in the CPU cache)."""
    columns = (
        ranked.example,
        ranked.char_start,
        ranked.char_end,
        ranked.score,
        ranked.probability,
        ranked.start_logit,
        ranked.end_logit,
    )
    spans: list[SpanPrediction] = []
    for lo in range(0, len(ranked.example), _SPAN_BATCH):
        e, starts, ends, *rest = (column[lo : lo + _SPAN_BATCH].tolist() for column in columns)
        spans += map(SpanPrediction, [contexts[x][s:t] for x, s, t in zip(e, starts, ends)], starts, ends, *rest)
    return spans


def _example_columns(examples: Any) -> tuple[list[str], list, dict[str, int]]:
    """Example ids (as strings), contexts, and each id's row; a repeated id or a context that is not a
    string is an error naming the rows."""
    columns = _read_columns(examples, ["id", "context"], "examples")
    ids, contexts = [str(i) for i in columns["id"]], columns["context"]
    example_index: dict[str, int] = {}
    for i, (example_id, context) in enumerate(zip(ids, contexts)):
        if example_id in example_index:
            raise ValueError(f"examples: id {example_id!r} appears twice (rows {example_index[example_id]} and {i})")
        if not isinstance(context, str):
            raise ValueError(f"examples: row {i} (id {example_id!r}) has a context of type {type(context).__name__}")
        example_index[example_id] = i
    return ids, contexts, example_index


def _choose_answers(ids, bounds, spans, cls_scores, has_window, num_features: int, config: PostprocessConfig):
    """Each example's answer from its n-best list (or, in SQuAD 2.0 mode, the null answer); the report
    counts the examples answered "" and why."""
    report = PostprocessReport(num_examples=len(ids), num_features=num_features)
    predictions: dict[str, ExamplePrediction] = {}
    for e, example_id in enumerate(ids):
        nbest = spans[bounds[e] : bounds[e + 1]]
        cls = None if cls_scores is None or math.isinf(cls_scores[e]) else float(cls_scores[e])
        null = cls if config.version_2_with_negative else None
        text, start, end, score = "", 0, 0, -math.inf if null is None else null
        if not has_window[e]:
            report.examples_without_features_ids.append(example_id)
        elif not nbest:
            report.examples_without_span_ids.append(example_id)
        elif null is not None and null - nbest[0].score > config.null_score_diff_threshold:
            report.null_answers += 1
        else:
            text, start, end, score = nbest[0].text, nbest[0].start, nbest[0].end, nbest[0].score
        predictions[example_id] = ExamplePrediction(example_id, text, start, end, score, nbest, null, cls)
    report.examples_without_features = len(report.examples_without_features_ids)
    report.examples_without_span = len(report.examples_without_span_ids)

    logger.info("%s", report.summary())
    if report.examples_without_features or report.examples_without_span:
        logger.warning(
            '%d examples have no window and %d have no valid span; they are answered "" (first ids: %s)',
            report.examples_without_features,
            report.examples_without_span,
            (report.examples_without_features_ids + report.examples_without_span_ids)[:5],
        )
    return predictions, report


def write_predictions(
    predictions: Mapping[str, ExamplePrediction], output_dir: str | Path, *, prefix: str = ""
) -> dict[str, Path]:
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


# ---- Inputs and their checks ----------------------------------------------------------------------


def _read_columns(data: Any, names: list[str], what: str) -> dict[str, Any]:
    """The named columns as lists, of a `datasets.Dataset` (select/shard views respected) or of a list of
    dict rows; a dataset's offset_mapping stays an Arrow array."""
    if hasattr(data, "with_format") and hasattr(data, "column_names"):
        missing = [n for n in names if n not in data.column_names]
        if missing:
            raise ValueError(f"{what} have no {missing[0]!r} column (columns: {data.column_names})")
        table = data.with_format("arrow", columns=names)[:]
        return {n: table.column(n) if n == "offset_mapping" else table.column(n).to_pylist() for n in names}
    rows = list(data)
    for i, row in enumerate(rows):
        missing = [n for n in names if n not in row]
        if missing:
            raise ValueError(f"{what} row {i} has no {missing[0]!r} key")
    return {n: [row[n] for row in rows] for n in names}


def _has_column(data: Any, name: str) -> bool:
    """Whether every row of `data` (a `datasets.Dataset` or a list of dict rows) has `name`."""
    if hasattr(data, "column_names"):
        return name in data.column_names
    return all(name in row for row in data)


def _offsets(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """All windows' offsets as one `[num_tokens, 2]` int64 array, and the windows' token counts.
    A `None` pair (the Hugging Face marker of non-context tokens) reads as [-1, -1]."""
    if hasattr(column, "to_pylist"):  # Arrow: straight from the buffers, unless there are nulls
        import pyarrow.compute as pc

        tokens = pc.list_flatten(column)
        values = pc.list_flatten(tokens)
        if not (column.null_count or tokens.null_count or values.null_count) and len(values) == 2 * len(tokens):
            lengths = pc.list_value_length(column).to_numpy().astype(np.int64)
            return values.to_numpy().astype(np.int64, copy=False).reshape(-1, 2), lengths
        column = column.to_pylist()
    lengths = np.fromiter(map(len, column), np.int64, len(column))
    try:  # one C-level pass over all integers; None markers or a wrong count take the loop below
        values = chain.from_iterable(chain.from_iterable(column))
        flat = np.fromiter(values, np.int64, 2 * int(lengths.sum()))
        if next(values, None) is None:
            return flat.reshape(-1, 2), lengths
    except (TypeError, ValueError):
        pass
    parts = [np.zeros((0, 2), np.int64)]
    for f, mapping in enumerate(column):
        try:
            parts.append(np.array([(-1, -1) if p is None else p for p in mapping], np.int64).reshape(len(mapping), 2))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"features: window {f} offset_mapping is not a list of [start, end] integer pairs ({err})"
            ) from None
    return np.concatenate(parts), lengths


def _check_offsets(
    offsets: np.ndarray, row_starts: np.ndarray, context_length: np.ndarray, feature_ids: list[str]
) -> None:
    """Every token needs start <= end, and end <= len(context) (`context_length`: per window)."""
    bad = offsets[:, 1] < offsets[:, 0]
    nonempty = np.flatnonzero(np.diff(row_starts))
    too_far = np.maximum.reduceat(offsets[:, 1], row_starts[nonempty]) > context_length[nonempty]
    if too_far.any():
        f = int(nonempty[np.argmax(too_far)])
        bad[row_starts[f] + np.argmax(offsets[row_starts[f] : row_starts[f + 1], 1])] = True
    if bad.any():
        t = int(np.argmax(bad))
        f = int(np.searchsorted(row_starts, t, side="right") - 1)
        raise ValueError(
            f"features: window {f} (example {feature_ids[f]!r}) token {t - row_starts[f]} has offsets "
            f"{offsets[t].tolist()}, not a span of its context (length {context_length[f]}): context tokens "
            f"need 0 <= start <= end <= len(context), other tokens [-1, -1]"
        )


def _check_logits(start_logits: Any, end_logits: Any, num_features: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    start, end = np.asarray(start_logits), np.asarray(end_logits)
    for name, arr in (("start_logits", start), ("end_logits", end)):
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(
                f"{name} must be a floating point [num_features, seq_len] array, got {arr.dtype} {arr.shape}"
            )
        if arr.shape[0] != num_features:
            raise ValueError(f"{name} has {arr.shape[0]} rows but there are {num_features} features")
        if arr.shape[1] < width:
            raise ValueError(f"{name} has {arr.shape[1]} positions but a feature has {width} tokens")
    return start, end


def _null_scores(
    cls_index: list,
    start: np.ndarray,
    end: np.ndarray,
    lengths: np.ndarray,
    feature_example: np.ndarray,
    num_examples: int,
    strict: bool = True,
) -> np.ndarray:
    """Per example, the minimum of its windows' start_logit[cls] + end_logit[cls] (inf: no window has one).
    `strict` (SQuAD 2.0 mode, where the score competes): a cls_index outside its window or a non-finite
    score is an error; otherwise such a window has no score."""
    cls = np.asarray(cls_index, dtype=np.int64).reshape(-1)
    rows = np.flatnonzero(lengths > 0)  # a window without tokens has no CLS score
    outside = (cls[rows] < 0) | (cls[rows] >= lengths[rows])
    if outside.any() and strict:
        f = rows[np.argmax(outside)]
        raise ValueError(f"features: window {f} has cls_index {cls[f]} outside its {lengths[f]} tokens")
    rows = rows[~outside]
    window_null = np.full(len(lengths), np.inf)
    window_null[rows] = start[rows, cls[rows]].astype(np.float64) + end[rows, cls[rows]]
    if strict and not np.isfinite(window_null[rows]).all():
        f = rows[np.argmax(~np.isfinite(window_null[rows]))]
        raise ValueError(f"window {f}: the null (CLS) score is {window_null[f]} (logits must be finite)")
    window_null[~np.isfinite(window_null)] = np.inf
    null = np.full(num_examples, np.inf)
    np.minimum.at(null, feature_example, window_null)
    return null
