"""A synthetic Korean corpus of any size for the retrieval scale benchmark: passages (JSONL) and e5-like
passage vectors (.npy), generated deterministically from a seed and the shared data.

Text. The model is fitted on the real passages of the shared data (every context of its SQuAD files,
split by kqa's splitter: about 1,800 passages). A synthetic passage
- takes its length (characters) from the real passages' lengths, drawn at random: the length
  distribution is the one kqa's splitter makes (a 500-character cap, TyDi's short contexts, KorQuAD's
  long ones cut into pieces);
- is filled with real sentences used as templates (a random sentence, then the sentences that follow it
  in its passage, as a reader of the real text would meet them), cut at a word boundary at that length;
- has each word (eojeol) of a template replaced, with probability `SUBSTITUTION`, by a word drawn from
  the real words with the same ending (last character, or last two when the last is punctuation): the
  ending is where Korean puts its particles and verb endings, so the sentence keeps its grammatical
  shape while its content words change. Words are drawn by their real frequency, so the unigram
  distribution of words (and of the morphemes BM25 indexes) is the real, Zipfian one;
- gets new terms at the rate Heaps' law predicts: V(n) = K·n^β is fitted to the growth of the real
  vocabulary of index terms (Kiwi's content morphemes, what BM25 indexes: new words of real text are
  mostly known stems with new particles, so the term vocabulary, not the word one, is what must grow),
  and the n-th generated term is one never seen before with probability dV/dn = β·V(n)/n (the
  Good–Turing estimate of unseen mass at the real corpus's size, falling as the corpus grows). A new
  word is a stem of 2–3 Hangul syllables drawn by their real frequency, followed by the ending of the
  word it replaces. Without them the vocabulary would stop at the real one and posting lists of rare
  terms would be far longer than in a real corpus of that size.

BM25's query cost is the total length of the posting lists of the query's terms (plus a pass over the
score array), so what matters is the document frequency of the terms real questions use: frequent words
and particles keep their real document frequency here. What is not reproduced is topical burstiness
(real passages repeat their topic words; here content words are spread at random), which makes the
posting lists of content words somewhat longer than real ones: the synthetic corpus errs on the slow side.

Vectors. Each passage's vector is a weighted mix of the real e5 embeddings (`passage: ` + text,
`models/e5-small`, cached under the cache folder) of the one or two real passages its first sentences
came from, plus Gaussian noise with the covariance of the real embeddings (scaled by `NOISE_SCALE`),
normalised. So the vectors keep e5's anisotropy (all passages within a narrow cone, cosine ~0.7–0.9
to each other) and its cluster structure (topics), which is what makes approximate search hard or easy;
isotropic random vectors would make every neighbour equally far and ANN recall meaningless. A real
question's e5 embedding finds the synthetic passages made from its gold passage among its nearest.

    python benchmarks/synthetic_corpus.py --passages 100000 --out /tmp/kqa-scale/100000
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import random
import re
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The kqa of this checkout (not whichever one is installed): a benchmark measures the code beside it.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from common import REPO_ROOT, default_data_dir  # noqa: E402

from kqa.retrieval.dense import E5_MAX_POSITIONS  # noqa: E402

SUBSTITUTION = 0.5  # share of template words replaced by a word of the same ending
NOISE_SCALE = 0.5  # noise of a vector, in standard deviations of the real embeddings
SECOND_SOURCE_WEIGHT = (0.0, 0.5)  # weight range of the second real passage in a vector's mix
NEW_STEM_SYLLABLES = (2, 3)
GENERATOR_VERSION = 1  # part of the cache key: bump when the generated text or vectors change
DEFAULT_CACHE_DIR = Path("/tmp/kqa-scale-cache")
DEFAULT_EMBEDDING_MODEL = REPO_ROOT / "models" / "e5-small"
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_HANGUL = re.compile(r"[가-힣]")


# ----------------------------------------------------------------------------------------------
# The real passages and the text model fitted on them


def real_passages(data_dir: Path) -> list:
    """kqa's passages of every context in the SQuAD files under `data_dir` (as kqa index makes them)."""
    from kqa.retrieval import load_corpus
    from kqa.retrieval.corpus import split_corpus

    files = sorted(Path(data_dir).rglob("*.json"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no SQuAD *.json files (pass --data-dir or set KQA_DATA_DIR)")
    documents, _ = load_corpus(files)
    return split_corpus(documents)


def ending(word: str) -> str:
    """The class a word is substituted within: its last character, or two when the last is punctuation."""
    last = word[-1]
    return word[-2:] if len(word) > 1 and unicodedata.category(last).startswith("P") else last


@dataclass
class TextModel:
    lengths: list[int]  # characters of each real passage
    titles: list[str]  # title of each real passage
    sentences: list[list[str]]  # every real sentence, as words, in passage order
    sentence_passage: list[int]  # the real passage each sentence comes from
    classes: dict[str, tuple[list[str], list[int]]]  # ending → (words, cumulative counts)
    syllables: tuple[list[str], list[int]]  # Hangul syllables, cumulative counts
    heaps_k: float  # V(n) = K·n^β over index terms
    heaps_beta: float
    real_words: int  # words in the real passages
    terms_per_word: float  # index terms per word in the real passages

    @classmethod
    def fit(cls, passages, passage_terms: list[list[str]]) -> TextModel:
        """`passage_terms`: the analyzer's terms of each passage (Heaps' law is fitted on them)."""
        sentences, sentence_passage, stream = [], [], []
        for i, p in enumerate(passages):
            for sentence in _SENTENCE_BREAK.split(p.text):
                words = sentence.split()
                if words:
                    sentences.append(words)
                    sentence_passage.append(i)
                    stream.extend(words)
        by_class: dict[str, Counter] = {}
        for word, count in Counter(stream).items():
            by_class.setdefault(ending(word), Counter())[word] = count
        classes = {c: _cumulative(counter) for c, counter in by_class.items()}
        syllables = _cumulative(Counter(ch for w in stream for ch in w if _HANGUL.match(ch)))
        terms = [t for p in passage_terms for t in p]
        k, beta = fit_heaps(terms)
        return cls(
            lengths=[len(p.text) for p in passages],
            titles=[p.title for p in passages],
            sentences=sentences,
            sentence_passage=sentence_passage,
            classes=classes,
            syllables=syllables,
            heaps_k=k,
            heaps_beta=beta,
            real_words=len(stream),
            terms_per_word=len(terms) / len(stream),
        )

    def new_word_probability(self, n: int) -> float:
        """The chance that the n-th generated word brings a new term: dV/dn of V(n) = K·n^β at its
        place in the real + synthetic term stream, times the terms per word."""
        n_terms = (self.real_words + n) * self.terms_per_word
        return min(1.0, self.terms_per_word * self.heaps_beta * self.heaps_k * n_terms ** (self.heaps_beta - 1.0))


def _cumulative(counter: Counter) -> tuple[list[str], list[int]]:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))  # a stable order, whatever the hashing
    words = [w for w, _ in items]
    cumulative, total = [], 0
    for _, count in items:
        total += count
        cumulative.append(total)
    return words, cumulative


def _draw(rng: random.Random, table: tuple[list[str], list[int]]) -> str:
    words, cumulative = table
    return words[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]


def fit_heaps(stream: list[str], points: int = 8) -> tuple[float, float]:
    """Least-squares fit of log V(n) = log K + β log n over `points` prefixes of the second half of the
    stream (the first words are all new and would bias β)."""
    seen: set[str] = set()
    marks = {int(len(stream) * (0.5 + 0.5 * i / points)) for i in range(1, points + 1)}
    ns, vs = [], []
    for n, word in enumerate(stream, 1):
        seen.add(word)
        if n in marks:
            ns.append(n)
            vs.append(len(seen))
    beta, log_k = np.polyfit(np.log(ns), np.log(vs), 1)
    return float(np.exp(log_k)), float(beta)


# ----------------------------------------------------------------------------------------------
# Generating passages


@dataclass(frozen=True)
class SyntheticPassage:
    id: str
    title: str
    text: str
    sources: tuple[int, int]  # the real passages of its first and second sentence (the same when one)


class PassageGenerator:
    """Deterministic: the same model, seed and order give the same passages."""

    def __init__(self, model: TextModel, seed: int):
        self.model = model
        self.rng = random.Random(seed)
        self.words_made = 0
        self.new_words = 0

    def _word(self, template: str) -> str:
        rng, model = self.rng, self.model
        self.words_made += 1
        if rng.random() >= SUBSTITUTION:
            return template
        # Substitutions carry all new words, so their rate is scaled by the share of words substituted.
        if rng.random() < model.new_word_probability(self.words_made) / SUBSTITUTION:
            self.new_words += 1
            stem = "".join(_draw(rng, model.syllables) for _ in range(rng.randint(*NEW_STEM_SYLLABLES)))
            return stem + (ending(template) if len(template) > 1 else "")
        return _draw(rng, model.classes[ending(template)])

    def passage(self, index: int) -> SyntheticPassage:
        model, rng = self.model, self.rng
        target = rng.choice(model.lengths)
        s = rng.randrange(len(model.sentences))
        sources = [model.sentence_passage[s]]
        words: list[str] = []
        size = -1
        while size < target:
            for template in model.sentences[s]:
                word = self._word(template)
                words.append(word)
                size += len(word) + 1
            s = s + 1 if s + 1 < len(model.sentences) and size < target else rng.randrange(len(model.sentences))
            if len(sources) == 1:
                sources.append(model.sentence_passage[s])
        # Cut at the last word boundary within the target length (at least one word).
        while len(words) > 1 and size > target:
            size -= len(words.pop()) + 1
        text = " ".join(words)
        return SyntheticPassage(f"syn-{index:07d}", model.titles[sources[0]], text, (sources[0], sources[1]))


# ----------------------------------------------------------------------------------------------
# Vectors


def real_embeddings(passages, model_dir: Path, cache_dir: Path, max_length: int = E5_MAX_POSITIONS) -> np.ndarray:
    """e5 passage embeddings of the real passages, of their first `max_length` tokens (e5's whole window
    by default; less only to make smoke runs fast). Cached: the key is the texts, the model's files and
    `max_length`."""
    key = hashlib.sha256(str(max_length).encode())
    for p in passages:
        key.update(p.text.encode("utf-8") + b"\0")
    for f in sorted(Path(model_dir).glob("*")):
        if f.is_file():
            key.update(f"{f.name}:{f.stat().st_size}".encode())
    path = Path(cache_dir) / f"real-e5-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    from kqa.retrieval import Embedder, EmbedderSettings

    print(f"embedding {len(passages)} real passages with {model_dir} (once; cached at {path})", flush=True)
    t = time.perf_counter()
    embedder = Embedder.from_pretrained(model_dir, device="cpu", settings=EmbedderSettings(max_length=max_length))
    vectors = embedder.embed_passages([p.text for p in passages])
    print(f"  {time.perf_counter() - t:.1f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors, allow_pickle=False)
    return vectors


class VectorModel:
    """Mixes of real embeddings plus Gaussian noise with their covariance (module docstring)."""

    def __init__(self, real: np.ndarray, seed: int):
        self.real = real.astype(np.float64)
        centred = self.real - self.real.mean(0)
        cov = centred.T @ centred / max(1, len(real) - 1)
        # Eigen-factor (PSD with a few ~0 eigenvalues: clip them) so noise = z @ factor has covariance cov.
        values, vectors = np.linalg.eigh(cov)
        self.factor = (vectors * np.sqrt(np.clip(values, 0, None))).T
        self.rng = np.random.default_rng(seed)

    def vectors(self, sources: np.ndarray) -> np.ndarray:
        """float32 [len(sources), d] unit vectors for passages made from sources [n, 2]."""
        n = len(sources)
        w = self.rng.uniform(*SECOND_SOURCE_WEIGHT, size=(n, 1))
        mixed = (1 - w) * self.real[sources[:, 0]] + w * self.real[sources[:, 1]]
        mixed += NOISE_SCALE * (self.rng.standard_normal((n, self.factor.shape[0])) @ self.factor)
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        return mixed.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Writing a corpus


@dataclass(frozen=True)
class SyntheticCorpus:
    directory: Path
    passages: Path  # JSONL, one {"id", "title", "text"} per line
    vectors: Path | None  # .npy float32 [n, d], or None when made without vectors
    info: dict


def corpus_key(num_passages: int, seed: int, with_vectors: bool) -> str:
    return f"{num_passages}-seed{seed}-v{GENERATOR_VERSION}" + ("" if with_vectors else "-text")


def make_corpus(
    num_passages: int,
    out_dir: Path,
    *,
    seed: int = 0,
    data_dir: Path | None = None,
    embedding_model: Path | None = DEFAULT_EMBEDDING_MODEL,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    embedding_max_length: int = E5_MAX_POSITIONS,
    chunk: int = 10_000,
) -> SyntheticCorpus:
    """Write `num_passages` passages (and vectors, unless `embedding_model` is None) under `out_dir`,
    streaming: a chunk of passages is in memory at a time. Reuses a complete earlier corpus there."""
    out_dir = Path(out_dir)
    info_path = out_dir / "corpus.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("key") == corpus_key(num_passages, seed, embedding_model is not None) and info.get(
            "embedding_max_length"
        ) == (embedding_max_length if embedding_model is not None else None):
            return _corpus_of(out_dir, info)
    t0 = time.perf_counter()
    passages = real_passages(data_dir or default_data_dir())
    from kqa.retrieval.sparse import MorphemeAnalyzer

    model = TextModel.fit(passages, MorphemeAnalyzer().analyze_many([p.text for p in passages]))
    generator = PassageGenerator(model, seed)
    vector_model = vectors_file = None
    if embedding_model is not None:
        real = real_embeddings(passages, Path(embedding_model), cache_dir, embedding_max_length)
        vector_model = VectorModel(real, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if vector_model is not None:
        vectors_file = np.lib.format.open_memmap(
            out_dir / "vectors.npy", mode="w+", dtype=np.float32, shape=(num_passages, vector_model.real.shape[1])
        )
    lengths = np.zeros(num_passages, dtype=np.int32)
    with open(out_dir / "passages.jsonl", "w", encoding="utf-8") as f:
        for begin in range(0, num_passages, chunk):
            batch = [generator.passage(i) for i in range(begin, min(num_passages, begin + chunk))]
            for p in batch:
                f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")
                lengths[int(p.id[4:])] = len(p.text)
            if vectors_file is not None:
                vectors_file[begin : begin + len(batch)] = vector_model.vectors(np.array([p.sources for p in batch]))
    if vectors_file is not None:
        vectors_file.flush()
        del vectors_file
    info = {
        "key": corpus_key(num_passages, seed, embedding_model is not None),
        "passages": num_passages,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "real_passages": len(passages),
        "real_words": model.real_words,
        "terms_per_word": round(model.terms_per_word, 4),
        "heaps_k": round(model.heaps_k, 4),
        "heaps_beta": round(model.heaps_beta, 4),
        "words": generator.words_made,
        "new_words": generator.new_words,
        "length_quantiles": {q: int(np.percentile(lengths, q)) for q in (10, 50, 90, 99)},
        "real_length_quantiles": {q: int(np.percentile(model.lengths, q)) for q in (10, 50, 90, 99)},
        "embedding_model": None if embedding_model is None else str(embedding_model),
        "embedding_max_length": None if embedding_model is None else embedding_max_length,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return _corpus_of(out_dir, info)


def _corpus_of(out_dir: Path, info: dict) -> SyntheticCorpus:
    vectors = out_dir / "vectors.npy"
    return SyntheticCorpus(out_dir, out_dir / "passages.jsonl", vectors if info["embedding_model"] else None, info)


def read_passages(path: Path):
    """The passages of a corpus JSONL as `Document`s (one passage each), streamed."""
    from kqa.retrieval.corpus import Document

    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                yield Document(id=row["id"], title=row["title"], text=row["text"], source=f"{path}:{line_no}")
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not a passage record ({type(err).__name__}: {err})") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for passages.jsonl, vectors.npy, corpus.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None, help="the shared data (default: $KQA_DATA_DIR)")
    parser.add_argument("--embedding-model", type=Path, default=DEFAULT_EMBEDDING_MODEL)
    parser.add_argument("--no-vectors", action="store_true", help="text only (no e5 model needed)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    corpus = make_corpus(
        args.passages,
        args.out,
        seed=args.seed,
        data_dir=args.data_dir,
        embedding_model=None if args.no_vectors else args.embedding_model,
        cache_dir=args.cache_dir,
    )
    print(json.dumps(corpus.info, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
