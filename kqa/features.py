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

import functools
import hashlib
import json
import logging
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kqa.text import nfc_with_alignment

logger = logging.getLogger("kqa.features")

# Bookkeeping columns written by the map function and removed once the report is computed.
_STATUS_COLUMN = "_kqa_answer_status"
_TRUNCATED_COLUMN = "_kqa_question_truncated"

# Per-window answer status (the first gold answer, the one used for labels).
STATUS_NO_ANSWER = -1  # unanswerable question or no gold answer
STATUS_NOT_IN_WINDOW = 0  # the window does not hold the whole answer: labelled CLS
STATUS_EXACT = 1  # held; the labelled tokens decode to exactly the gold text
STATUS_INEXACT = 2  # held; a token boundary falls inside the answer, so the tokens cover a little more


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
):
    """Examples → windows with per-token offsets into the original context.

    Returns `(features, report)`. Columns: input_ids, attention_mask, [token_type_ids], example_id,
    cls_index (the CLS token's position: the null answer's token), offset_mapping (`[start, end)` per
    token; `[-1, -1]` for question, special and whitespace-only tokens), and with `with_labels` also
    start_positions / end_positions (the same labels as `prepare_train_features`, for an evaluation
    loss) from the same single tokenisation. Examples need no `answers` column unless `with_labels`;
    when it is there, the report counts lost answers.
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
):
    _check_tokenizer(tokenizer, config)
    _check_examples(examples, with_labels)
    keep_token_types = "token_type_ids" in tokenizer.model_input_names
    cache_file_name, fingerprint = None, None
    if not examples.cache_files:
        if cache:
            cache_file_name = _in_memory_cache_file(
                examples, tokenizer, config, with_labels, with_offsets, keep_token_types
            )
            fingerprint = Path(cache_file_name).stem
        else:
            # Nothing will be cached, so the fingerprint only names the result: skip `datasets` hashing
            # the tokenizer and arguments with dill (~10 ms a call, most of a one-question prediction's
            # feature time).
            fingerprint = uuid.uuid4().hex
    features = examples.map(
        _build_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={
            "tokenizer": tokenizer,
            "config": config,
            "with_labels": with_labels,
            "with_offsets": with_offsets,
            "keep_token_types": keep_token_types,
            "code_digest": _code_digest(),
        },
        features=_output_schema(with_labels, with_offsets, keep_token_types),
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        cache_file_name=cache_file_name,
        new_fingerprint=fingerprint,
        desc=desc,
    )
    report = _report_from_features(features, num_examples=len(examples))
    features = features.remove_columns([_STATUS_COLUMN, _TRUNCATED_COLUMN])
    logger.info("%s", report.summary())
    if report.num_lost_answers:
        logger.warning(
            "%d answers are held by no window: %s", report.num_lost_answers, ", ".join(report.lost_answer_ids[:20])
        )
    return features, report


def feature_cache_dir() -> Path:
    """Where features of in-memory examples are cached: $KQA_CACHE_DIR/features, else under the
    `datasets` cache (HF_DATASETS_CACHE)."""
    import datasets

    root = os.environ.get("KQA_CACHE_DIR")
    return Path(root) / "features" if root else Path(datasets.config.HF_DATASETS_CACHE) / "kqa" / "features"


def _in_memory_cache_file(
    examples, tokenizer, config: FeatureConfig, with_labels: bool, with_offsets: bool, keep_token_types: bool
) -> str:
    """A cache file named by the content of the examples, the tokenizer, the settings and the code.

    Examples loaded from JSON live in memory, and `datasets` caches only maps over file-backed
    datasets; naming the output file by a content digest gives in-memory examples the same
    "tokenise once" behaviour across runs.
    """
    digest = hashlib.sha256()
    columns = [c for c in ("id", "question", "context", "answers", "is_impossible") if c in examples.column_names]
    table = examples.select_columns(columns).with_format("arrow")[:]
    digest.update(json.dumps(table.to_pydict(), ensure_ascii=False).encode())
    digest.update(type(tokenizer).__name__.encode())
    digest.update(_tokenizer_digest(tokenizer.backend_tokenizer).encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    digest.update(repr((config, with_labels, with_offsets, keep_token_types, _code_digest())).encode())
    cache_dir = feature_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    kind = "eval" if with_offsets else "train"
    return str(cache_dir / f"{kind}-{digest.hexdigest()[:40]}.arrow")


def _tokenizer_digest(backend) -> str:
    """A digest of a `tokenizers.Tokenizer`'s serialised form without its truncation and padding, which
    are per-call state the backend keeps from the last call, not identity. The state is switched off
    for the serialisation and put back: hashing the string is ~10x cheaper than parsing the JSON
    (17 MB for an XLM-R vocabulary) to drop two keys."""
    truncation, padding = backend.truncation, backend.padding
    try:
        backend.no_truncation()
        backend.no_padding()
        return hashlib.sha256(backend.to_str().encode()).hexdigest()
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


@functools.cache
def _code_digest() -> str:
    """A digest of the code that shapes features. `datasets` fingerprints a map function by its own
    bytecode only, not the functions it calls; passing this digest as an argument makes any change to
    this module, to `kqa.text` or to the tokenizer libraries a cache miss instead of stale features."""
    import tokenizers
    import transformers

    from kqa import text

    digest = hashlib.sha256()
    for module_file in (__file__, text.__file__):
        digest.update(Path(module_file).read_bytes())
    digest.update(f"tokenizers={tokenizers.__version__} transformers={transformers.__version__}".encode())
    return digest.hexdigest()


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
    trim_tables = [_whitespace_trim_tables(nfc) for nfc, _ in aligned]
    answers = batch.get("answers") or [None] * len(ids)
    impossible = batch.get("is_impossible") or [False] * len(ids)
    answer_spans = [_first_answer_span(*row) for row in zip(ids, contexts, answers, impossible)]

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

    out: dict[str, list] = {
        "input_ids": [],
        "attention_mask": [],
        "example_id": [],
        _STATUS_COLUMN: [],
        _TRUNCATED_COLUMN: [],
    }
    if keep_token_types:
        out["token_type_ids"] = []
    if with_labels:
        out["start_positions"], out["end_positions"] = [], []
    if with_offsets:
        out["cls_index"], out["offset_mapping"] = [], []

    for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        origin = aligned[example_index][1]
        input_ids = encoded["input_ids"][i]
        offsets = _context_offsets(
            encoded["offset_mapping"][i], encoded.sequence_ids(i), trim_tables[example_index], origin
        )
        cls_index = _cls_index(input_ids, tokenizer)
        status, start, end = _label_window(offsets, answer_spans[example_index], contexts[example_index], cls_index)

        out["input_ids"].append(input_ids)
        out["attention_mask"].append(encoded["attention_mask"][i])
        if keep_token_types:
            out["token_type_ids"].append(encoded["token_type_ids"][i])
        out["example_id"].append(ids[example_index])
        out[_STATUS_COLUMN].append(status)
        out[_TRUNCATED_COLUMN].append(truncated[example_index])
        if with_labels:
            out["start_positions"].append(start)
            out["end_positions"].append(end)
        if with_offsets:
            out["cls_index"].append(cls_index)
            out["offset_mapping"].append(offsets.tolist())
    return out


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


def _first_answer_span(example_id, context: str, answers, is_impossible):
    """`(start, end)` of the first gold answer in original-context characters, or None."""
    if is_impossible or not answers or not answers.get("text"):
        return None
    text, start = answers["text"][0], answers["answer_start"][0]
    if not text:
        raise ValueError(f"example {example_id!r}: the first answer is an empty string")
    end = start + len(text)
    if start < 0 or context[start:end] != text:
        raise ValueError(
            f"example {example_id!r}: answer {text!r} does not match the context at answer_start {start} "
            f"(found {context[start:end]!r})"
        )
    return start, end


# str.isspace() as a lookup table up to U+3001: the last whitespace code point is U+3000 (tested), and
# U+3001 (not whitespace) stands for every code point above it.
_IS_SPACE = np.array([chr(cp).isspace() for cp in range(0x3002)], dtype=bool)


def _whitespace_trim_tables(text: str) -> tuple[np.ndarray, np.ndarray]:
    """For every boundary `i` in `0..len(text)`: `skip[i]`, the first non-whitespace position at or after
    `i`, and `back[i]`, the end of the last non-whitespace character at or before `i`. Computed once per
    context with array scans and shared by all its windows, so trimming a token's span is two lookups."""
    n = len(text)
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    is_space = _IS_SPACE[np.minimum(code_points, len(_IS_SPACE) - 1)]
    positions = np.arange(n, dtype=np.int64)
    next_solid = np.append(np.where(is_space, n, positions), n)
    skip = np.minimum.accumulate(next_solid[::-1])[::-1]
    solid_end = np.where(is_space, 0, positions + 1)
    back = np.concatenate(([0], np.maximum.accumulate(solid_end)))
    return skip, back


def _context_offsets(offset_mapping, sequence_ids, trim_tables, origin: np.ndarray) -> np.ndarray:
    """Per token `[start, end)` in the ORIGINAL context, whitespace trimmed; -1 for anything that is
    not context (question, special tokens) and for whitespace-only tokens."""
    result = np.full((len(sequence_ids), 2), -1, dtype=np.int64)
    rows = _context_rows(sequence_ids)
    if len(rows) == 0:
        return result
    # Convert only the offsets from the first to the last context token (the whole context, in a pair).
    first, stop = rows[0], rows[-1] + 1
    offsets = np.asarray(offset_mapping[first:stop], dtype=np.int64).reshape(-1, 2)[rows - first]
    skip, back = trim_tables
    start = np.minimum(skip[offsets[:, 0]], offsets[:, 1])  # leading whitespace, never past the token's end
    end = back[offsets[:, 1]]  # trailing whitespace; a whitespace-only token ends at or before its start
    kept = start < end
    rows = rows[kept]
    result[rows, 0] = origin[start[kept]]
    result[rows, 1] = origin[end[kept]]
    return result


def _context_rows(sequence_ids: list) -> np.ndarray:
    """Positions of the context's tokens (sequence id 1). They are contiguous in a pair encoding, which
    list methods (running in C) confirm without a Python loop over every token."""
    count = sequence_ids.count(1)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    first = sequence_ids.index(1)
    if sequence_ids[first : first + count].count(1) == count:
        return np.arange(first, first + count)
    return np.flatnonzero(np.fromiter((s == 1 for s in sequence_ids), dtype=bool, count=len(sequence_ids)))


def _cls_index(input_ids: list[int], tokenizer) -> int:
    cls_id = tokenizer.cls_token_id
    if cls_id is not None and cls_id in input_ids:
        return input_ids.index(cls_id)
    return 0  # tokenizers without a CLS token: position 0, as is conventional


def _label_window(offsets: np.ndarray, span, context: str, cls_index: int) -> tuple[int, int, int]:
    """Return `(status, start_token, end_token)` for one window."""
    if span is None:
        return STATUS_NO_ANSWER, cls_index, cls_index
    answer_start, answer_end = span
    context_tokens = np.flatnonzero(offsets[:, 0] >= 0)
    if len(context_tokens) == 0:
        return STATUS_NOT_IN_WINDOW, cls_index, cls_index
    # The answer's characters without surrounding whitespace, which no trimmed token covers.
    while answer_start < answer_end and context[answer_start].isspace():
        answer_start += 1
    while answer_end > answer_start and context[answer_end - 1].isspace():
        answer_end -= 1
    starts, ends = offsets[context_tokens, 0], offsets[context_tokens, 1]
    if starts[0] > answer_start or ends[-1] < answer_end:
        return STATUS_NOT_IN_WINDOW, cls_index, cls_index
    overlapping = context_tokens[(starts < answer_end) & (ends > answer_start)]
    if len(overlapping) == 0:  # the answer's characters fall in no token (e.g. dropped by the normaliser)
        return STATUS_NOT_IN_WINDOW, cls_index, cls_index
    first, last = int(overlapping[0]), int(overlapping[-1])
    exact = offsets[first, 0] == span[0] and offsets[last, 1] == span[1]
    return (STATUS_EXACT if exact else STATUS_INEXACT), first, last


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
