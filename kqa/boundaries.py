"""Korean-aware answer boundaries: move an answer span's edges off particles and endings.

A model that finds the right place often takes the particle with it: 「1446년에」 for the gold
「1446년」, 「세종대왕이」 for 「세종대왕」. With `PostprocessConfig(answer_boundaries="korean")` the
post-processor (`kqa.postprocess`) runs every n-best span through `adjust_spans`:

- each context is analysed once per call with Kiwi (`kiwipiepy`, already kqa's morpheme analyzer for
  retrieval), on its NFC form; the morphemes' offsets are mapped back to the user's text
  (`kqa.text.nfc_with_alignment`), so the spans stay slices of the context as given, NFD or not;
- end: while the span's last morpheme has a tag of `TRIM_TAGS` (particles, the copula and endings),
  the end moves to that morpheme's start. It moves only when the morpheme left at the end is a
  `HOST_TAGS` word (a noun, number, foreign word, closing bracket, …) in the same word (no space
  between), which ends exactly where the trimmed morphemes begin (a host sharing a syllable with an
  ending, as in 간 = 가 + ㄴ, is never cut) and lies inside the span: a span is never emptied;
- start: while the span's first morpheme has a tag of `TRIM_TAGS` and is glued to a `HOST_TAGS`
  word just before the span (a span that begins inside a word, at its particle), the start moves past
  it and past the spaces after it;
- a span whose edge falls inside a morpheme is left as it is.

The tag lists are learned from the training data, not from the dev sets: `scripts/answer_endings.py`
counts, over the gold answers of the KorQuAD and TyDi train files, the tag of the morpheme that ends
a gold answer against the tag of the morpheme glued right after it (docs/postprocess_and_metric.md
has the table). A tag is trimmed when gold answers stop before it far more often than they end with it.

Spans that become identical are merged in the n-best list: the first (best-scoring) one stays with its
score and logits, and its probability becomes the sum of the merged spans' probabilities, so the list
still sums to 1 - P(null). The order (score descending) and the chosen answer's place do not change.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kqa.text import nfc_with_alignment

BOUNDARY_MODES = ("off", "korean")

# Learned from the train sets by scripts/answer_endings.py (its table: docs/postprocess_and_metric.md):
# gold answers stop before these tags at least 5 times and at least 10 times as often as they end with them.
TRIM_TAGS = frozenset(
    {
        "JKS",  # 이/가
        "JKG",  # 의
        "JKO",  # 을/를
        "JKB",  # 에, 에서, 으로, …
        "JX",  # 은/는, 도, 만, …
        "JC",  # 와/과, …
        "VCP",  # the copula 이(다); the endings after it (다, 며, ㄴ) are not trimmed: gold answers end with them
        "XSV",  # a verb suffix left at the end (창제하)
        "SSO",  # an opening bracket glued to the word: 세종대왕(
        "SP",  # a comma, a colon
        "SF",  # a full stop
    }
)
# The words gold answers end with, at least 5 times, where one of TRIM_TAGS is glued after them.
HOST_TAGS = frozenset(
    {
        "NNG",
        "NNP",
        "NNB",  # nouns, bound nouns (년, 명)
        "SN",
        "SL",  # numbers, foreign words
        "XSN",  # noun suffixes (들, 씨)
        "SSC",  # a closing bracket: 《첼시 걸즈》가
        "SW",  # symbols (%, ℃)
        "EF",  # a final ending before a full stop: (…학문이다).
    }
)


_KIWI_LOCK = threading.Lock()  # two threads asking first would each load a Kiwi (2 s, 100 MB)


@functools.cache
def _load_kiwi():
    try:
        from kiwipiepy import Kiwi
    except ImportError as err:
        raise ImportError(
            f"answer_boundaries='korean' needs kiwipiepy ({err}): pip install kiwipiepy, or set answer_boundaries='off'"
        ) from None
    return Kiwi()


def kiwi():
    """The Kiwi analyzer (loaded once per process: about 2 s and 100 MB)."""
    with _KIWI_LOCK:
        return _load_kiwi()


def warm_up() -> None:
    """Load Kiwi and its model now (the model loads on the first analysis: a few seconds), so that a
    server's first question does not wait for it."""
    kiwi().tokenize("훈민정음은 1446년에 반포되었다.")


@dataclass(frozen=True)
class Morphemes:
    """A context's morphemes in Kiwi's order, with offsets into the original (not NFC) text."""

    start: np.ndarray
    end: np.ndarray
    tags: tuple[str, ...]

    def tag_ending_at(self, position: int) -> str | None:
        """The tag of the last morpheme that ends at `position` (None when none does)."""
        hits = np.flatnonzero(self.end == position)
        return self.tags[hits[-1]] if len(hits) else None

    def tag_starting_at(self, position: int) -> str | None:
        """The tag of the first morpheme that starts at `position` (None when none does)."""
        hits = np.flatnonzero(self.start == position)
        return self.tags[hits[0]] if len(hits) else None


def _morphemes(tokens, origin: np.ndarray) -> Morphemes:
    starts = np.fromiter((t.start for t in tokens), np.int64, len(tokens))
    ends = starts + np.fromiter((t.len for t in tokens), np.int64, len(tokens))
    return Morphemes(origin[starts], origin[ends], tuple(t.tag for t in tokens))


def analyse(contexts: Sequence[str]) -> list[Morphemes]:
    """The morphemes of every context (Kiwi's threads analyse a list of several at once)."""
    aligned = [nfc_with_alignment(c) for c in contexts]
    texts = [nfc for nfc, _ in aligned]
    results = [kiwi().tokenize(texts[0])] if len(texts) == 1 else kiwi().tokenize(texts)
    return [_morphemes(tokens, origin) for tokens, (_, origin) in zip(results, aligned)]


def trim_end(m: Morphemes, start: int, end: int) -> int:
    """The span's end moved back over trailing particles and endings (see the module docstring)."""
    lo, hi = np.searchsorted(m.start, start, "left"), np.searchsorted(m.start, end, "left")
    if hi <= lo or m.end[lo:hi].max() != end:  # no morpheme, or the end falls inside one
        return end
    cut, trimmed = end, False
    for j in range(hi - 1, lo - 1, -1):
        tag, left, right = m.tags[j], int(m.start[j]), int(m.end[j])
        if right > cut or (right == cut and tag in TRIM_TAGS and left < cut):
            if tag not in TRIM_TAGS:
                return end  # a word shares a syllable with the ending (간 = 가 + ㄴ)
            cut, trimmed = min(cut, left), True
        elif right == cut and left < cut:
            return cut if trimmed and tag in HOST_TAGS else end
        elif right == cut:
            continue  # an empty morpheme
        else:
            return end  # a space before the trimmed part: not one word
    return end


def trim_start(m: Morphemes, context: str, start: int, end: int) -> int:
    """The span's start moved forward over leading particles glued to a word before the span."""
    before = np.flatnonzero((m.end == start) & (m.start < start))
    if not len(before) or m.tags[before[-1]] not in HOST_TAGS:
        return start
    lo, hi = np.searchsorted(m.start, start, "left"), np.searchsorted(m.start, end, "left")
    cut = start
    for j in range(lo, hi):
        left = int(m.start[j])
        if left > cut:  # a space: the glued run is over
            break
        if m.tags[j] not in TRIM_TAGS:
            if left < cut:
                return start  # a word shares a syllable with the particle
            break
        cut = max(cut, int(m.end[j]))
    if cut == start or cut >= end or not context[cut].isspace():
        return start  # nothing to trim, or the run does not end its word (이다: a copula, then an ending)
    while cut < end and context[cut].isspace():
        cut += 1
    return cut if cut < end else start


def adjust_spans(spans: list, bounds: list[int], example_contexts: Sequence[str]) -> tuple[list, list[int]]:
    """The n-best lists (example e's spans at `bounds[e]:bounds[e + 1]`, of `SpanPrediction`) with their
    boundaries moved and the spans that became identical merged; returns the new spans and bounds."""
    wanted = [e for e in range(len(example_contexts)) if bounds[e + 1] > bounds[e]]
    unique = list(dict.fromkeys(example_contexts[e] for e in wanted))
    analysed = dict(zip(unique, analyse(unique))) if unique else {}
    out, new_bounds = [], [0]
    for e, context in enumerate(example_contexts):
        merged: dict[tuple[int, int], int] = {}
        for span in spans[bounds[e] : bounds[e + 1]]:
            m = analysed[context]
            end = trim_end(m, span.start, span.end)
            start = trim_start(m, context, span.start, end)
            if (start, end) in merged:
                kept = out[merged[start, end]]
                out[merged[start, end]] = replace(kept, probability=kept.probability + span.probability)
                continue
            merged[start, end] = len(out)
            moved = (start, end) != (span.start, span.end)
            out.append(replace(span, text=context[start:end], start=start, end=end) if moved else span)
        new_bounds.append(len(out))
    return out, new_bounds
