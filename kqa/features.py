"""Feature building: examples → tokenised windows with labels (train), or offsets plus optional labels (eval).

A context longer than one model input is cut into overlapping windows ("features"): the question
comes first, the context second, and the tokenizer slides over the context with `doc_stride` tokens
of overlap (`truncation="only_second"`, `return_overflowing_tokens=True`), so an answer near a window
edge is whole in the next window. No answer is lost to truncation.

Text is tokenised in NFC (see `kqa.text`), and every context token offset is mapped back into the
ORIGINAL context, so labels and offsets are always in the user's own character coordinates. Token
offsets are trimmed of whitespace (SentencePiece tokenizers such as XLM-R include the space before a
word in its token), so a predicted span never starts or ends with a space.

Both builders run through `datasets.Dataset.map(batched=True)`: results of file-backed datasets are
cached, and `FeatureReport` is computed from the produced features themselves (two bookkeeping
columns, dropped before returning), so it is the same whether the map ran in several processes or was
served from the cache.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import numpy as np

from kqa.feature_cache import code_digest, file_backed_fingerprint, in_memory_cache_file
from kqa.spans import (
    STATUS_EXACT,
    STATUS_INEXACT,
    STATUS_NO_ANSWER,
    STATUS_NOT_IN_WINDOW,
    cls_index_of,
    context_offsets,
    first_answer_span,
    label_window,
    whitespace_trim_tables,
)
from kqa.text import nfc_with_alignment

logger = logging.getLogger("kqa.features")

# Bookkeeping columns written by the map function and removed once the report is computed.
_STATUS_COLUMN = "_kqa_answer_status"
_TRUNCATED_COLUMN = "_kqa_question_truncated"


@dataclass(frozen=True)
class FeatureConfig:
    """Window geometry, in tokens."""

    max_seq_length: int = 384
    doc_stride: int = 128
    """Tokens shared by consecutive windows of one context."""
    max_query_length: int = 64
    """Longer questions are cut to this many tokens."""

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "doc_stride", "max_query_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"FeatureConfig.{name} must be an int, got {value!r}")
        if self.max_seq_length < 8:
            raise ValueError(f"FeatureConfig.max_seq_length must be at least 8, got {self.max_seq_length}")
        if self.max_query_length < 1:
            raise ValueError(f"FeatureConfig.max_query_length must be at least 1, got {self.max_query_length}")
        if self.doc_stride < 0:
            raise ValueError(f"FeatureConfig.doc_stride must not be negative, got {self.doc_stride}")
        self.check_room(num_special_tokens=3)

    def check_room(self, num_special_tokens: int) -> None:
        """Raise unless a window has room for a full-length question, the special tokens and more
        context than the stride (otherwise the tokenizer could not advance from window to window)."""
        room = self.max_seq_length - self.max_query_length - num_special_tokens
        if self.doc_stride >= room:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be smaller than max_seq_length - max_query_length - "
                f"{num_special_tokens} special tokens = {self.max_seq_length} - {self.max_query_length} - "
                f"{num_special_tokens} = {room}; lower doc_stride or max_query_length, or raise max_seq_length"
            )


@dataclass
class FeatureReport:
    """What feature building did to a set of examples. Every count is over examples unless it says
    windows; answers are the first gold answer of each example (the one labels are built from)."""

    num_examples: int
    num_features: int
    num_multi_window_examples: int = 0
    """Examples whose context needed more than one window."""
    num_windows_without_answer: int = 0
    """Windows labelled CLS: they do not hold the whole answer (or the question has none)."""
    num_unanswerable_examples: int = 0
    """Examples without a gold answer (SQuAD 2.0 impossible questions, or no answer given)."""
    num_truncated_questions: int = 0
    num_lost_answers: int = 0
    """Examples with an answer that no window holds whole."""
    num_inexact_answers: int = 0
    """Examples whose answer is held, but whose labelled tokens cover more than the answer because a
    token boundary falls inside it (e.g. a particle glued to the answer's last word)."""
    lost_answer_ids: list[str] = field(default_factory=list)
    inexact_answer_ids: list[str] = field(default_factory=list)

    @property
    def num_exact_answers(self) -> int:
        """Examples whose labelled tokens decode to exactly the gold answer."""
        answered = self.num_examples - self.num_unanswerable_examples
        return answered - self.num_lost_answers - self.num_inexact_answers

    def summary(self) -> str:
        text = (
            f"{self.num_examples} examples -> {self.num_features} features "
            f"({self.num_multi_window_examples} examples in several windows, "
            f"{self.num_windows_without_answer} windows labelled CLS); "
            f"{self.num_truncated_questions} questions truncated; "
            f"answers: {self.num_exact_answers} exact, {self.num_inexact_answers} not token-aligned, "
            f"{self.num_lost_answers} lost, {self.num_unanswerable_examples} unanswerable"
        )
        if self.lost_answer_ids:
            shown = ", ".join(self.lost_answer_ids[:5])
            more = f" and {len(self.lost_answer_ids) - 5} more" if len(self.lost_answer_ids) > 5 else ""
            text += f" (lost: {shown}{more})"
        return text


# ---- public API ----------------------------------------------------------------------------------


def prepare_train_features(
    examples,
    tokenizer,
    config: FeatureConfig = FeatureConfig(),
    *,
    num_proc: Optional[int] = None,
    load_from_cache_file: bool = True,
    cache: bool = True,
    desc: str = "Building train features",
):
    """Examples → windows with `start_positions`/`end_positions` token labels.

    Returns `(features, report)`. Columns: input_ids, attention_mask, [token_type_ids],
    start_positions, end_positions, example_id. A window that does not hold the whole first answer
    (and every window of an unanswerable question) is labelled with the CLS index. No offsets: the
    training loop never decodes spans, and offsets are most of a feature's size.
    """
    return _prepare(
        examples,
        tokenizer,
        config,
        with_labels=True,
        with_offsets=False,
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        cache=cache,
        desc=desc,
    )


def prepare_eval_features(
    examples,
    tokenizer,
    config: FeatureConfig = FeatureConfig(),
    *,
    with_labels: bool = False,
    num_proc: Optional[int] = None,
    load_from_cache_file: bool = True,
    cache: bool = True,
    desc: str = "Building eval features",
    progress: bool = True,
):
    """Examples → windows with per-token offsets into the original context.

    Returns `(features, report)`. Columns: input_ids, attention_mask, [token_type_ids], example_id,
    cls_index (the CLS token's position: the null answer's token), offset_mapping (`[start, end)` per
    token; `[-1, -1]` for question, special and whitespace-only tokens), and with `with_labels` also
    start_positions / end_positions (the same labels as `prepare_train_features`, for an evaluation
    loss) from the same single tokenisation. Examples need no `answers` column unless `with_labels`;
    when it is there, the report counts lost answers. `progress=False` builds the windows in this
    process without `datasets.map` and its progress bar (what a library call answering a few questions
    wants; nothing is cached then).
    """
    return _prepare(
        examples,
        tokenizer,
        config,
        with_labels=with_labels,
        with_offsets=True,
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        cache=cache,
        desc=desc,
        progress=progress,
    )


# ---- the map ---------------------------------------------------------------------------------------


def _prepare(
    examples,
    tokenizer,
    config: FeatureConfig,
    *,
    with_labels: bool,
    with_offsets: bool,
    num_proc,
    load_from_cache_file,
    cache,
    desc,
    progress: bool = True,
):
    _check_tokenizer(tokenizer, config)
    _check_examples(examples, with_labels)
    keep_token_types = "token_type_ids" in tokenizer.model_input_names
    cache_file_name, fingerprint = None, None
    if not examples.cache_files:
        if cache:
            cache_file_name = in_memory_cache_file(
                examples, tokenizer, config, with_labels, with_offsets, keep_token_types
            )
            fingerprint = Path(cache_file_name).stem
        else:
            # Nothing will be cached, so the fingerprint only names the result: skip `datasets` hashing
            # the tokenizer and arguments with dill (~10 ms a call, most of a one-question prediction's
            # feature time).
            fingerprint = uuid.uuid4().hex
    else:
        fingerprint = file_backed_fingerprint(examples, tokenizer, config, with_labels, with_offsets, keep_token_types)
    build_kwargs = {
        "tokenizer": tokenizer,
        "config": config,
        "with_labels": with_labels,
        "with_offsets": with_offsets,
        "keep_token_types": keep_token_types,
        "code_digest": code_digest(),
    }
    schema = _output_schema(with_labels, with_offsets, keep_token_types)
    if not progress and cache_file_name is None:  # one batch in this process: no map, no progress bar
        features = datasets.Dataset.from_dict(_build_features(examples[:], **build_kwargs), features=schema)
        return _finish(features, len(examples))
    features = examples.map(
        _build_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs=build_kwargs,
        features=schema,
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        cache_file_name=cache_file_name,
        new_fingerprint=fingerprint,
        desc=desc,
    )
    return _finish(features, len(examples))


def _finish(features, num_examples: int):
    """The report of built windows, logged; the windows without the report's bookkeeping columns."""
    report = _report_from_features(features, num_examples=num_examples)
    features = features.remove_columns([_STATUS_COLUMN, _TRUNCATED_COLUMN])
    logger.info("%s", report.summary())
    if report.num_lost_answers:
        logger.warning(
            "%d answers are held by no window: %s", report.num_lost_answers, ", ".join(report.lost_answer_ids[:20])
        )
    return features, report


def _check_tokenizer(tokenizer, config: FeatureConfig) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; kqa needs a `tokenizers`-backed "
            "(PreTrainedTokenizerFast) tokenizer for offset mappings and overflowing windows"
        )
    config.check_room(tokenizer.num_special_tokens_to_add(pair=True))
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max is not None and model_max < config.max_seq_length:
        raise ValueError(
            f"max_seq_length ({config.max_seq_length}) exceeds the tokenizer's model_max_length ({model_max})"
        )


def _check_examples(examples, with_labels: bool) -> None:
    required = ["id", "question", "context"] + (["answers"] if with_labels else [])
    missing = [c for c in required if c not in examples.column_names]
    if missing:
        raise ValueError(f"examples lack the column(s) {missing}; they have {examples.column_names}")
    if len(examples) == 0:
        raise ValueError("there are no examples to build features from")
    ids = examples.select_columns(["id"]).with_format("arrow")[:].column("id").to_pylist()
    counts = Counter(ids)
    duplicates = [i for i, n in counts.items() if n > 1]
    if duplicates:
        raise ValueError(f"example ids must be unique; {len(duplicates)} repeat, e.g. {duplicates[:5]}")


def _output_schema(with_labels: bool, with_offsets: bool, keep_token_types: bool):
    from datasets import Features, Sequence, Value

    columns: dict[str, Any] = {
        "input_ids": Sequence(Value("int32")),
        "attention_mask": Sequence(Value("int8")),
    }
    if keep_token_types:
        columns["token_type_ids"] = Sequence(Value("int8"))
    if with_labels:
        columns["start_positions"] = Value("int64")
        columns["end_positions"] = Value("int64")
    columns["example_id"] = Value("string")
    if with_offsets:
        columns["cls_index"] = Value("int32")
        columns["offset_mapping"] = Sequence(Sequence(Value("int64"), length=2))
    columns[_STATUS_COLUMN] = Value("int8")
    columns[_TRUNCATED_COLUMN] = Value("bool")
    return Features(columns)


def _build_features(
    batch: dict[str, list],
    tokenizer,
    config: FeatureConfig,
    with_labels: bool,
    with_offsets: bool,
    keep_token_types: bool,
    code_digest: str = "",
) -> dict[str, list]:
    """The batched map function: one batch of examples → all their windows. (`code_digest` is unused
    here; it is an argument only so that it enters the cache fingerprint.)"""
    ids = batch["id"]
    questions, truncated = _prepare_questions(batch["question"], ids, tokenizer, config.max_query_length)
    contexts = batch["context"]
    for example_id, context in zip(ids, contexts):
        if not context or not context.strip():
            raise ValueError(f"example {example_id!r}: the context is empty")
    aligned = [nfc_with_alignment(c) for c in contexts]
    trim_tables = [whitespace_trim_tables(nfc) for nfc, _ in aligned]
    answers = batch.get("answers") or [None] * len(ids)
    impossible = batch.get("is_impossible") or [False] * len(ids)
    answer_spans = [first_answer_span(*row) for row in zip(ids, contexts, answers, impossible)]

    encoded = tokenizer(
        questions,
        [nfc for nfc, _ in aligned],
        truncation="only_second",
        max_length=config.max_seq_length,
        stride=config.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )

    out = _empty_columns(with_labels, with_offsets, keep_token_types)
    for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        input_ids = encoded["input_ids"][i]
        offsets = context_offsets(
            encoded["offset_mapping"][i], encoded.sequence_ids(i), trim_tables[example_index], aligned[example_index][1]
        )
        cls_index = cls_index_of(input_ids, tokenizer)
        status, start, end = label_window(offsets, answer_spans[example_index], contexts[example_index], cls_index)
        row = {
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"][i],
            "token_type_ids": encoded["token_type_ids"][i] if keep_token_types else None,
            "example_id": ids[example_index],
            _STATUS_COLUMN: status,
            _TRUNCATED_COLUMN: truncated[example_index],
            "start_positions": start,
            "end_positions": end,
            "cls_index": cls_index,
            "offset_mapping": offsets.tolist() if with_offsets else None,
        }
        for name, column in out.items():  # only the columns this build keeps
            column.append(row[name])
    return out


def _empty_columns(with_labels: bool, with_offsets: bool, keep_token_types: bool) -> dict[str, list]:
    """The columns one build fills, in `_output_schema`'s order."""
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if keep_token_types else [])]
    names += ["start_positions", "end_positions"] if with_labels else []
    names += ["example_id", *(["cls_index", "offset_mapping"] if with_offsets else [])]
    return {name: [] for name in [*names, _STATUS_COLUMN, _TRUNCATED_COLUMN]}


def _prepare_questions(questions: list[str], ids: list[str], tokenizer, max_query_length: int):
    """NFC, leading whitespace stripped, cut to `max_query_length` tokens. Returns (texts, truncated flags)."""
    texts = []
    for example_id, question in zip(ids, questions):
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"example {example_id!r}: the question is empty")
        texts.append(nfc_with_alignment(question.lstrip())[0])
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    truncated = [False] * len(texts)
    for i, offsets in enumerate(encoded["offset_mapping"]):
        if len(offsets) > max_query_length:
            texts[i] = _cut_question(texts[i], offsets, tokenizer, max_query_length)
            truncated[i] = True
    return texts, truncated


def _cut_question(text: str, offsets, tokenizer, max_query_length: int) -> str:
    """Cut `text` at the end of its `max_query_length`-th token. Re-tokenising a prefix can, rarely,
    split differently; step back a token at a time until the prefix fits."""
    keep = max_query_length
    while keep > 0:
        cut = text[: offsets[keep - 1][1]]
        if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= max_query_length:
            return cut
        keep -= 1
    raise ValueError(f"cannot cut question {text[:40]!r}... to {max_query_length} tokens")


# ---- the report --------------------------------------------------------------------------------------


def _report_from_features(features, num_examples: int) -> FeatureReport:
    """Count everything from the feature columns, so cached and multi-process maps report the same."""
    table = features.select_columns(["example_id", _STATUS_COLUMN, _TRUNCATED_COLUMN]).with_format("arrow")[:]
    example_ids = table.column("example_id").to_pylist()
    statuses = table.column(_STATUS_COLUMN).to_numpy().astype(np.int64)
    truncated = table.column(_TRUNCATED_COLUMN).to_pylist()

    # The most telling window of each example: held exactly > held inexactly > not held > no answer.
    rank = {STATUS_NO_ANSWER: 0, STATUS_NOT_IN_WINDOW: 1, STATUS_INEXACT: 2, STATUS_EXACT: 3}
    best_status: dict[str, int] = {}
    windows: Counter = Counter()
    truncated_ids = set()
    for example_id, status, was_truncated in zip(example_ids, statuses.tolist(), truncated):
        windows[example_id] += 1
        previous = best_status.get(example_id, STATUS_NO_ANSWER)
        best_status[example_id] = status if rank[status] > rank[previous] else previous
        if was_truncated:
            truncated_ids.add(example_id)
    if len(best_status) != num_examples:
        raise RuntimeError(f"feature building produced windows for {len(best_status)} of {num_examples} examples")

    lost = [i for i, s in best_status.items() if s == STATUS_NOT_IN_WINDOW]
    inexact = [i for i, s in best_status.items() if s == STATUS_INEXACT]
    return FeatureReport(
        num_examples=num_examples,
        num_features=len(example_ids),
        num_multi_window_examples=sum(1 for n in windows.values() if n > 1),
        num_windows_without_answer=int(np.sum(statuses <= STATUS_NOT_IN_WINDOW)),
        num_unanswerable_examples=sum(1 for s in best_status.values() if s == STATUS_NO_ANSWER),
        num_truncated_questions=len(truncated_ids),
        num_lost_answers=len(lost),
        num_inexact_answers=len(inexact),
        lost_answer_ids=lost,
        inexact_answer_ids=inexact,
    )
