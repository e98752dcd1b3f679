"""Where an answer lies in one window: token offsets in the user's own characters, whitespace trimmed,
and the label (start and end token, or the CLS token) with the window's answer status.

`kqa.features` calls these for every window it builds; they are plain functions of numpy arrays and
strings, so each can be tested against a per-token reference (tests/test_features.py).
"""

from __future__ import annotations

import numpy as np

# Per-window answer status (the first gold answer, the one used for labels).
STATUS_NO_ANSWER = -1  # unanswerable question or no gold answer
STATUS_NOT_IN_WINDOW = 0  # the window does not hold the whole answer: labelled CLS
STATUS_EXACT = 1  # held; the labelled tokens decode to exactly the gold text
STATUS_INEXACT = 2  # held; a token boundary falls inside the answer, so the tokens cover a little more


def first_answer_span(example_id, context: str, answers, is_impossible):
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


def whitespace_trim_tables(text: str) -> tuple[np.ndarray, np.ndarray]:
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


def context_offsets(offset_mapping, sequence_ids, trim_tables, origin: np.ndarray) -> np.ndarray:
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


def cls_index_of(input_ids: list[int], tokenizer) -> int:
    cls_id = tokenizer.cls_token_id
    if cls_id is not None and cls_id in input_ids:
        return input_ids.index(cls_id)
    return 0  # tokenizers without a CLS token: position 0, as is conventional


def label_window(offsets: np.ndarray, span, context: str, cls_index: int) -> tuple[int, int, int]:
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
