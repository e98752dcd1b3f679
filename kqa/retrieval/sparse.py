"""Sparse retrieval: BM25 (`bm25s`) over the terms of an analyzer.

Analyzers turn a text into index terms:
- `MorphemeAnalyzer` ("morphemes"): Korean morphemes from `kiwipiepy`, keeping content morphemes
  (nouns, verb and adjective stems, roots, numbers, foreign words, hanja), so that 서울의 / 서울에서 /
  서울은 all match 서울 and particles and endings do not count as evidence;
- `CharBigramAnalyzer` ("bigrams"): overlapping character pairs inside each word, no dependency —
  the fallback, and the reference the benchmark compares morphemes with.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

MORPHEME_TAGS = frozenset(
    {
        "NNG",
        "NNP",
        "NNB",
        "NR",  # nouns, bound nouns (년, 월), numerals
        "VV",
        "VA",  # verb / adjective stems
        "XR",  # roots
        "SL",
        "SH",
        "SN",  # foreign words, hanja, numbers
        "MAG",  # general adverbs (가장, 처음)
    }
)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


class CharBigramAnalyzer:
    """Character bigrams inside whitespace-separated words (a one-character word is its own term)."""

    name = "bigrams"

    @property
    def version(self) -> str:
        return "1"

    def __call__(self, text: str) -> list[str]:
        terms = []
        for word in _normalise(text).split():
            word = "".join(ch for ch in word if ch.isalnum())
            if len(word) == 1:
                terms.append(word)
            terms.extend(word[i : i + 2] for i in range(len(word) - 1))
        return terms

    def analyze_many(self, texts: Sequence[str], show_progress: bool = False) -> list[list[str]]:
        from tqdm.auto import tqdm

        return [self(t) for t in tqdm(texts, desc="bigrams", unit="passage", disable=not show_progress)]


class MorphemeAnalyzer:
    """Content morphemes from Kiwi (`kiwipiepy`): "대한민국에서 가장 큰 항구" → 대한민국 가장 크 항구."""

    name = "morphemes"

    def __init__(self, num_workers: int | None = None):
        try:
            from kiwipiepy import Kiwi
        except ImportError as err:
            raise ImportError(
                f"the morpheme analyzer needs kiwipiepy ({err}): pip install kiwipiepy, or use the 'bigrams' analyzer"
            ) from None
        # num_workers None: Kiwi's default (every core) for lists of texts.
        self._kiwi = Kiwi() if num_workers is None else Kiwi(num_workers=num_workers)

    @property
    def version(self) -> str:
        """Analyses can change between Kiwi releases, so an index records the versions it was built with."""
        from importlib.metadata import version

        import kiwipiepy

        try:
            model = version("kiwipiepy_model")
        except Exception:  # the model may come from elsewhere (KIWI_MODEL_PATH)
            model = "unknown"
        return f"kiwipiepy {kiwipiepy.__version__}, model {model}"

    def _terms(self, tokens) -> list[str]:
        # Interned: Kiwi makes a new string for every token, ~77 bytes each; the term lists of a corpus
        # wait in memory for the BM25 build, so 10^6 passages (~70M terms) would hold ~5 GiB of copies.
        return [sys.intern(t.form.lower() if t.tag == "SL" else t.form) for t in tokens if t.tag in MORPHEME_TAGS]

    def __call__(self, text: str) -> list[str]:
        return self._terms(self._kiwi.tokenize(_normalise(text)))

    def analyze_many(self, texts: Sequence[str], show_progress: bool = False) -> list[list[str]]:
        from tqdm.auto import tqdm

        normalised = [_normalise(t) for t in texts]
        results = self._kiwi.tokenize(normalised)  # a lazy iterator, analysed on Kiwi's threads
        return [
            self._terms(tokens)
            for tokens in tqdm(results, total=len(texts), desc="morphemes", unit="passage", disable=not show_progress)
        ]


ANALYZERS = {"morphemes": MorphemeAnalyzer, "bigrams": CharBigramAnalyzer}


def make_analyzer(name: str):
    if name not in ANALYZERS:
        raise ValueError(f"analyzer must be one of {sorted(ANALYZERS)}, got {name!r}")
    return ANALYZERS[name]()


def _bm25s():
    from kqa.extras import require

    require("retrieval", "bm25s")  # not faiss: only approximate dense search needs it
    import bm25s

    return bm25s


class BM25Index:
    """BM25 (Lucene's variant, bm25s's default k1=1.5, b=0.75) over pre-analysed passages; `scores`
    gives every passage's score for one query, the form hybrid fusion needs."""

    def __init__(self, bm25):
        self._bm25 = bm25

    @classmethod
    def build(cls, passage_terms: Iterable[list[str]], *, show_progress: bool = False) -> BM25Index:
        bm25s = _bm25s()
        bm25 = bm25s.BM25()
        bm25.index(list(passage_terms), show_progress=show_progress)
        return cls(bm25)

    @property
    def num_passages(self) -> int:
        return int(self._bm25.scores["num_docs"])

    def scores(self, query_terms: Sequence[str]) -> np.ndarray:
        """float32 [num_passages]; terms the index has never seen add nothing (all zeros when none is known)."""
        vocab = self._bm25.vocab_dict
        ids = [vocab[t] for t in query_terms if t and t in vocab]
        if not ids:
            return np.zeros(self.num_passages, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        self._bm25.save(str(directory), allow_pickle=False, show_progress=False)

    @classmethod
    def load(cls, directory: str | Path) -> BM25Index:
        bm25s = _bm25s()
        directory = Path(directory)
        with open(directory / "params.index.json", encoding="utf-8") as f:
            json.load(f)  # a readable parameters file, or a clear JSON error before bm25s reads the arrays
        return cls(bm25s.BM25.load(str(directory), allow_pickle=False, show_progress=False))
