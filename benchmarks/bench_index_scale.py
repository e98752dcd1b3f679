"""Retrieval at scale: index build time and memory, query latency and ANN recall over a synthetic Korean
corpus of 10^5–10^6 passages (benchmarks/synthetic_corpus.py: how it is made and why it stands in for
a real one).

Each size runs in a fresh process (so peak memory is that size's): the corpus is generated (or reused
from --cache-dir), its passages are analysed with kqa's `MorphemeAnalyzer` (Kiwi) and indexed with
`BM25Index`; the synthetic e5-like vectors are given to a `DenseIndex` instead of embedding the passages
(a `Retriever` is assembled from the parts, as `Retriever.load` does). The passages' embedding time is
estimated from the passages/s of the embedding model on a sample of them: it is not measured at scale.

Queries are the real questions of the dev files, embedded with the real model (`--embedding-model`) one
at a time, as a server would. Latency is reported with the query embedding included and without it
(vectors embedded beforehand); hybrid is kqa's default (score fusion of BM25 and dense candidates).

Backends (`--backends`): `inprocess` (kqa's `Retriever`), `milvus` (kqa.retrieval.milvus_store over
Milvus Lite: the same passages, the in-process run's Kiwi terms read back from the corpus cache and the
same vectors, FLAT then HNSW dense index; its rankings are compared with the in-process index's); dense
search (`--dense`): `exact` (numpy) and `ann` (`DenseIndex` with an approximate
graph, when kqa.retrieval.ann is importable). What cannot run is skipped with its reason, in the table.

    python benchmarks/bench_index_scale.py --passages 100000 --passages 1000000 --out scale.json
    python benchmarks/bench_index_scale.py --passages 2000 --queries 20 --embedding-model DIR   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The kqa of this checkout (not whichever one is installed): a benchmark measures the code beside it.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from common import (  # noqa: E402
    machine_info,
    percentile,
    print_header,
    print_table,
    profile_call,
    settings_from_args,
    write_json,
)
from synthetic_corpus import DEFAULT_CACHE_DIR, DEFAULT_EMBEDDING_MODEL, E5_MAX_POSITIONS, make_corpus, read_passages  # noqa: E402

BACKENDS = ("inprocess", "milvus")
DENSE_MODES = ("exact", "ann")
TARGETS = {"hybrid_p95_ms_with_embedding": 100.0, "index_memory_gib": 4.0}  # at 10^6 passages, 2 cores
RECALL_K = 10


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def terms_cache_path(corpus_dir: Path, analyzer) -> Path:
    """Where the in-process run leaves the passages' terms for the engine run of the same corpus (Kiwi
    takes ~20 min at 10^6 passages on two cores: the engine is given the same terms, not a second run)."""
    import re

    return corpus_dir / (re.sub(r"[^\w.-]+", "_", f"terms-{analyzer.name}-{analyzer.version}") + ".npz")


def save_terms(path: Path, terms: list[list[str]]) -> None:
    """Terms as int32 ids per passage (ids, offsets) and the vocabulary as UTF-8 JSON: no pickle."""
    vocabulary: dict[str, int] = {}
    ids = np.fromiter((vocabulary.setdefault(t, len(vocabulary)) for ts in terms for t in ts), dtype=np.int32)
    offsets = np.cumsum([0, *map(len, terms)], dtype=np.int64)
    words = np.frombuffer(json.dumps(list(vocabulary), ensure_ascii=False).encode(), dtype=np.uint8)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=ids, offsets=offsets, vocabulary=words)
    os.replace(tmp, path)


def load_terms(path: Path) -> list[list[str]]:
    with np.load(path, allow_pickle=False) as arrays:
        vocabulary = json.loads(arrays["vocabulary"].tobytes().decode())
        ids, offsets = arrays["ids"], arrays["offsets"]
    words = [vocabulary[i] for i in ids.tolist()]
    return [words[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def stats_ms(seconds: list[float]) -> dict:
    return {"p50_ms": 1000 * percentile(seconds, 50), "p95_ms": 1000 * percentile(seconds, 95), "n": len(seconds)}


# ----------------------------------------------------------------------------------------------
# What can run


def ann_unavailable() -> str | None:
    """None when `DenseIndex` can be built with an approximate graph and searched with `search`."""
    from kqa.retrieval.dense import DenseIndex

    try:
        importlib.import_module("kqa.retrieval.ann")
    except ImportError as err:
        return f"kqa.retrieval.ann is not importable ({err})"
    if not hasattr(DenseIndex, "search") or "ann" not in inspect.signature(DenseIndex).parameters:
        return "DenseIndex has no search() / ann= parameter in this kqa"
    return None


def milvus_unavailable() -> str | None:
    try:
        importlib.import_module("kqa.retrieval.milvus_store")
    except ImportError as err:
        return f"kqa.retrieval.milvus_store is not importable ({err})"
    try:
        importlib.import_module("milvus_lite")
    except ImportError as err:
        return f"milvus-lite is not installed ({err}): pip install 'kqa[milvus]'"
    return None


def skipped_reasons(backends: list[str], dense_modes: list[str]) -> dict[str, str]:
    reasons = {}
    if "milvus" in backends and (why := milvus_unavailable()):
        reasons["milvus"] = why
    if "ann" in dense_modes and (why := ann_unavailable()):
        reasons["ann"] = why
    return reasons


# ----------------------------------------------------------------------------------------------
# The questions and a query embedder that serves precomputed vectors


def dev_questions(data_dir: Path, limit: int, seed: int) -> list[str]:
    """The questions of the `*dev*.json` files under `data_dir`, shuffled with `seed`, the first `limit`."""
    import random

    from kqa.squad import squad_questions

    questions = []
    for path in sorted(Path(data_dir).rglob("*dev*.json")):
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        questions.extend(item.qa["question"] for item in squad_questions(data, str(path)))
    if not questions:
        raise FileNotFoundError(f"{data_dir}: no questions in *dev*.json files")
    random.Random(seed).shuffle(questions)
    return questions[:limit]


class PrecomputedQueries:
    """An embedder whose query vectors were computed beforehand: search latency without the embedding."""

    def __init__(self, embedder, vectors: dict[str, np.ndarray]):
        self._embedder, self._vectors = embedder, vectors
        self.name, self.settings = embedder.name, embedder.settings

    def embed_queries(self, queries):
        return np.stack([self._vectors[q] for q in queries])

    def identity(self) -> dict:
        return self._embedder.identity()


# ----------------------------------------------------------------------------------------------
# One size, in its own process


def time_queries(fn, queries: list[str]) -> list[float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return times


def top_k_before(scores: np.ndarray, k: int, *, positive_only: bool = False) -> np.ndarray:
    """kqa.retrieval.fusion.top_k as it was before it used np.partition (the reference of the breakdown)."""
    candidates = np.flatnonzero(scores > 0) if positive_only else np.arange(scores.shape[0])
    if candidates.size > k:
        kth = scores[candidates[np.argpartition(-scores[candidates], k - 1)[k - 1]]]
        candidates = candidates[scores[candidates] >= kth]
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]


def hybrid_breakdown(retriever, queries: list[str], query_vectors: dict, k: int) -> dict[str, float]:
    """Median ms of each step of a hybrid query, done by hand the way `Retriever.retrieve_many` does it."""
    from kqa.retrieval.fusion import score_fusion, top_k

    n = retriever.settings.candidates
    steps: dict[str, list[float]] = {}

    def step(name, fn):
        t = time.perf_counter()
        out = fn()
        steps.setdefault(name, []).append(time.perf_counter() - t)
        return out

    w = retriever.settings.dense_weight
    for q in queries:
        terms = step("query analysis (Kiwi)", lambda q=q: retriever.analyzer(q))
        sparse = step("BM25 scores (bm25s)", lambda t=terms: retriever.sparse.scores(t))
        s_top = step("sparse top-k", lambda s=sparse: top_k(s, n, positive_only=True))
        dense = step("dense scores (matmul)", lambda q=q: retriever.dense.scores(query_vectors[q][None])[0])
        d_top = step("dense top-k", lambda d=dense: top_k(d, n))
        step("  reference: sparse top-k before", lambda s=sparse: top_k_before(s, n, positive_only=True))
        step("  reference: dense top-k before", lambda d=dense: top_k_before(d, n))
        step(
            "fusion",
            lambda: score_fusion([(s_top, sparse[s_top]), (d_top, dense[d_top])], [1.0 - w, w])[0][:k],
        )
    return {name: 1000 * float(np.median(v)) for name, v in steps.items()}


def embedding_rate(embedder, texts: list[str]) -> float:
    """Passages/s of the embedding model on `texts` (after a warm-up batch)."""
    embedder.embed_passages(texts[: embedder.batch_size])
    t = time.perf_counter()
    embedder.embed_passages(texts)
    return len(texts) / (time.perf_counter() - t)


def ann_rows(dense_index_cls, vectors, query_matrix, exact_top, k: int, ef_searches=()) -> tuple[dict, object]:
    from kqa.retrieval.ann import AnnSettings

    t = time.perf_counter()
    index = dense_index_cls(vectors, ann=AnnSettings(mode="on"))
    if not index.build_graph() or index.search_kind != "hnsw":  # the graph is built on request, not by the constructor
        raise RuntimeError(f"no HNSW graph was built over {len(vectors)} vectors")
    build = time.perf_counter() - t
    default = index.graph.settings
    sweep = {}
    for ef in sorted({default.ef_search, *ef_searches}):
        index.graph.settings = dataclasses.replace(default, ef_search=ef)
        times, hits = [], 0
        for i in range(len(query_matrix)):
            t = time.perf_counter()
            found = index.search(query_matrix[i : i + 1], k)
            times.append(time.perf_counter() - t)
            ids = _ids_of(found)
            hits += len(set(ids[:k]) & set(exact_top[i][:k].tolist()))
        sweep[ef] = {"recall": hits / (k * len(query_matrix)), **stats_ms(times)}
    index.graph.settings = default
    return {
        "ann_build_s": build,
        "ann_search": {k_: v for k_, v in sweep[default.ef_search].items() if k_ != "recall"},
        f"ann_recall@{k}": sweep[default.ef_search]["recall"],
        "ef_search": default.ef_search,
        "ef_search_sweep": sweep,
    }, index


def _ids_of(found) -> list[int]:
    """The passage indices of the first query in what `DenseIndex.search` returns (an integer array, or a
    tuple holding one next to the scores)."""
    parts = found if isinstance(found, tuple) else (found,)
    for part in parts:
        array = np.asarray(part)
        if np.issubdtype(array.dtype, np.integer):
            return np.atleast_2d(array)[0].tolist()
    raise TypeError(f"DenseIndex.search returned no integer indices: {type(found)}")


def corpus_of(args, num_passages: int):
    """The synthetic corpus of this size and seed (generated once, then read from --cache-dir)."""
    return make_corpus(
        num_passages,
        args.cache_dir / f"{num_passages}-seed{args.seed}",
        seed=args.seed,
        data_dir=args.data_dir,
        embedding_model=args.embedding_model,
        cache_dir=args.cache_dir,
        embedding_max_length=args.embedding_max_length,
    )


def embedding_model(args):
    from kqa.retrieval import Embedder, EmbedderSettings

    return Embedder.from_pretrained(
        args.embedding_model, device="cpu", settings=EmbedderSettings(max_length=args.embedding_max_length)
    )


def load_in_fresh_process(args, directory: Path) -> dict:
    """`Retriever.load` of a saved index in a new process, as a server starts: its RSS over the baseline
    (python, torch, the embedding model), and the load time. The building process's RSS also holds what
    the build freed but the allocator kept, so this is the index's memory as served."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child-load", str(directory)]
    command += [
        "--embedding-model",
        str(args.embedding_model),
        "--embedding-max-length",
        str(args.embedding_max_length),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    kiwi = [sys.executable, str(Path(__file__).resolve()), "--child-load", "kiwi"]
    out = subprocess.run(kiwi, check=True, capture_output=True, text=True).stdout
    return loaded | json.loads(out.strip().splitlines()[-1])


def child_load(args) -> None:
    from kqa.retrieval import Retriever

    if str(args.child_load) == "kiwi":  # Kiwi's model alone (the loaded index's analyzer holds one)
        from kqa.retrieval.sparse import MorphemeAnalyzer

        baseline = rss_mib()
        MorphemeAnalyzer()("서울은 대한민국의 수도이다.")
        print(json.dumps({"kiwi_mib": rss_mib() - baseline}))
        return
    embedder = embedding_model(args)
    embedder.embed_queries(["기준"])  # the first call allocates: part of the baseline, not of the index
    gc.collect()
    baseline = rss_mib()
    t = time.perf_counter()
    retriever = Retriever.load(args.child_load, embedder=embedder)
    seconds = time.perf_counter() - t
    gc.collect()
    print(
        json.dumps(
            {
                "index_mib": rss_mib() - baseline,
                "baseline_mib": baseline,
                "load_s": seconds,
                "dense_search": retriever.dense.search_kind if retriever.dense is not None else None,
                "passages": len(retriever.passages),
            }
        )
    )


def measure(args, num_passages: int) -> dict:
    from kqa.retrieval import Retriever, RetrieverSettings
    from kqa.retrieval.corpus import split_corpus
    from kqa.retrieval.dense import DenseIndex
    from kqa.retrieval.fusion import top_k
    from kqa.retrieval.sparse import BM25Index, MorphemeAnalyzer

    result: dict = {"passages": num_passages, "seconds": {}, "memory_mib": {}}
    seconds, memory = result["seconds"], result["memory_mib"]

    t = time.perf_counter()
    corpus = corpus_of(args, num_passages)
    seconds["generate (or reuse)"] = time.perf_counter() - t
    result["corpus"] = corpus.info
    embedder = embedding_model(args)
    gc.collect()
    memory["baseline (python, torch, model)"] = rss_mib()

    t = time.perf_counter()
    documents = list(read_passages(corpus.passages))
    passages = split_corpus(documents)
    seconds["read + split"] = time.perf_counter() - t
    if len(passages) != num_passages:
        raise RuntimeError(f"{corpus.passages}: {len(passages)} passages after splitting, expected {num_passages}")
    memory["documents + passages"] = rss_mib() - memory["baseline (python, torch, model)"]

    analyzer = MorphemeAnalyzer()
    cached = terms_cache_path(corpus.passages.parent, analyzer)
    t = time.perf_counter()
    if args.reuse_terms and cached.exists():  # a re-run of the same corpus: Kiwi's terms are the same
        terms = load_terms(cached)
        seconds["terms read back (Kiwi not run: --reuse-terms)"] = time.perf_counter() - t
    else:
        terms = analyzer.analyze_many([p.text for p in passages])
        seconds["analysis (Kiwi)"] = time.perf_counter() - t
    result["terms"] = sum(map(len, terms))
    t = time.perf_counter()
    sparse = BM25Index.build(terms)
    seconds["BM25 build"] = time.perf_counter() - t
    memory["peak while building BM25"] = peak_rss_mib()
    if not cached.exists():
        save_terms(cached, terms)  # after the peak is read: the engine run (--backends milvus) reuses them
    del terms
    gc.collect()
    bm25 = sparse._bm25
    result["vocabulary"] = len(bm25.vocab_dict)
    result["heaps_prediction"] = int(corpus.info["heaps_k"] * result["terms"] ** corpus.info["heaps_beta"])
    memory["BM25 arrays"] = sum(bm25.scores[k].nbytes for k in ("data", "indices", "indptr")) / 2**20

    t = time.perf_counter()
    vectors = np.load(corpus.vectors, allow_pickle=False)
    dense = DenseIndex(vectors)
    seconds["load vectors"] = time.perf_counter() - t
    memory["vectors"] = dense.embeddings.nbytes / 2**20
    settings = RetrieverSettings(method="hybrid")
    retriever = Retriever(
        documents, passages, settings, analyzer=analyzer, sparse=sparse, embedder=embedder, dense=dense
    )
    gc.collect()
    memory["index in memory (RSS - baseline)"] = rss_mib() - memory["baseline (python, torch, model)"]

    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        t = time.perf_counter()
        saved = Path(retriever.save(Path(tmp) / "index") or Path(tmp) / "index")  # the directory written
        seconds["save"] = time.perf_counter() - t
        result["disk_mib"] = {"total": dir_mib(saved)} | {
            f.name + ("/" if f.is_dir() else ""): dir_mib(f) if f.is_dir() else f.stat().st_size / 2**20
            for f in sorted(saved.iterdir())
        }

    sample = [p.text for p in passages[: args.embed_sample]]
    rate = embedding_rate(embedder, sample)
    result["embedding_estimate"] = {
        "sample": len(sample),
        "passages_per_s": rate,
        "estimated_s": num_passages / rate,
        "note": f"estimated from {len(sample)} passages embedded on this machine, not measured at this size",
    }

    queries = dev_questions(args.data_dir, args.queries, args.seed)
    for q in queries[:3]:  # warm-up: first calls allocate
        retriever.retrieve(q, args.k)
    query_vectors, embed_times = {}, []
    for q in queries:
        t = time.perf_counter()
        query_vectors[q] = embedder.embed_queries([q])[0]
        embed_times.append(time.perf_counter() - t)
    fast = Retriever(
        documents,
        passages,
        settings,
        analyzer=analyzer,
        sparse=sparse,
        embedder=PrecomputedQueries(embedder, query_vectors),
        dense=dense,
    )
    latency = {"query embedding": stats_ms(embed_times)}
    for label, r, method in (
        ("sparse", fast, "sparse"),
        ("dense exact, search only", fast, "dense"),
        ("dense exact + query embedding", retriever, "dense"),
        ("hybrid exact, search only", fast, "hybrid"),
        ("hybrid exact + query embedding", retriever, "hybrid"),
    ):
        latency[label] = stats_ms(time_queries(lambda q, r=r, m=method: r.retrieve(q, args.k, method=m), queries))
    result["latency"] = latency
    result["hybrid_breakdown_ms"] = hybrid_breakdown(fast, queries, query_vectors, args.k)
    if args.profile:
        result["hybrid_profile"] = profile_call(
            lambda: [fast.retrieve(q, args.k, method="hybrid") for q in queries[:20]], args.profile
        )

    if "ann" in args.dense and not args.skipped.get("ann"):
        query_matrix = np.stack([query_vectors[q] for q in queries])
        exact_top = [top_k(row, RECALL_K) for row in dense.scores(query_matrix)]
        ann, ann_index = ann_rows(DenseIndex, vectors, query_matrix, exact_top, RECALL_K, args.ef_search)
        result["ann"] = ann
        ann_retriever = Retriever(
            documents, passages, settings, analyzer=analyzer, sparse=sparse, embedder=embedder, dense=ann_index
        )
        for label, method in (("dense ann + query embedding", "dense"), ("hybrid ann + query embedding", "hybrid")):
            latency[label] = stats_ms(
                time_queries(lambda q, m=method: ann_retriever.retrieve(q, args.k, method=m), queries)
            )
        served = ann_retriever
    else:
        served = retriever
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        served.save(Path(tmp) / "index")
        result["loaded"] = load_in_fresh_process(args, Path(tmp) / "index")
        memory["index loaded by a fresh process (RSS - baseline)"] = result["loaded"]["index_mib"]
        memory["  of which Kiwi's model (measured alone)"] = result["loaded"]["kiwi_mib"]
    memory["peak (whole run)"] = peak_rss_mib()
    return result


# ----------------------------------------------------------------------------------------------
# The engine backend (Milvus Lite), in its own process


def tree_rss_mib(pid: int | None = None) -> float:
    """RSS of a process and all its descendants (Milvus Lite's server is a child process of the client)."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


class ReplayAnalyzer:
    """Kiwi for queries; for the passages, the terms the in-process run of this corpus analysed (read back
    from its cache, in passage order): the engine indexes the same terms without a second Kiwi run."""

    def __init__(self, analyzer, terms: list[list[str]]):
        self._analyzer, self._terms = analyzer, terms
        self.name, self.version = analyzer.name, analyzer.version

    def __call__(self, text: str) -> list[str]:
        return self._analyzer(text)

    def analyze_many(self, texts, show_progress: bool = False) -> list[list[str]]:
        if len(texts) != len(self._terms):
            raise RuntimeError(f"{len(texts)} passages to analyse, {len(self._terms)} cached term lists")
        return self._terms


class ReplayEmbedder(PrecomputedQueries):
    """The corpus's synthetic vectors for its passages (in order), the real model (or precomputed vectors)
    for queries."""

    def __init__(self, embedder, passage_vectors: np.ndarray, query_vectors: dict | None = None):
        super().__init__(embedder, query_vectors or {})
        self._passage_vectors, self._live = passage_vectors, query_vectors is None
        self.dimension, self.batch_size = embedder.dimension, embedder.batch_size

    def embed_passages(self, texts, show_progress: bool = False) -> np.ndarray:
        if len(texts) != len(self._passage_vectors):
            raise RuntimeError(f"{len(texts)} passages to embed, {len(self._passage_vectors)} cached vectors")
        return self._passage_vectors

    def embed_queries(self, queries):
        return self._embedder.embed_queries(queries) if self._live else super().embed_queries(queries)


def rankings(retriever, queries: list[str], k: int, methods: tuple[str, ...]) -> dict[str, list[list[str]]]:
    return {
        m: [[h.passage.id for h in hits] for hits in retriever.retrieve_many(queries, k, method=m)] for m in methods
    }


def overlap(expected: list[list[str]], found: list[list[str]]) -> dict:
    """Share of the expected top-k found, and how many rankings are identical."""
    hits = sum(len(set(e) & set(f)) for e, f in zip(expected, found))
    return {
        "overlap": hits / max(1, sum(map(len, expected))),
        "identical": sum(e == f for e, f in zip(expected, found)),
        "queries": len(expected),
    }


def measure_milvus(args, num_passages: int) -> dict:
    """The same passages, terms and vectors in Milvus Lite (kqa.retrieval.milvus_store), built the way
    `kqa index --backend milvus` builds them; latency as for the in-process index; rankings compared with
    the in-process index's (built here from the same terms and vectors, after the timings)."""
    from kqa.retrieval import Retriever, RetrieverSettings
    from kqa.retrieval.corpus import split_corpus
    from kqa.retrieval.dense import DenseIndex
    from kqa.retrieval.fusion import top_k
    from kqa.retrieval.milvus_store import MilvusStore
    from kqa.retrieval.sparse import BM25Index, MorphemeAnalyzer

    result: dict = {"backend": "milvus", "passages": num_passages, "seconds": {}, "memory_mib": {}}
    seconds, memory = result["seconds"], result["memory_mib"]
    corpus = corpus_of(args, num_passages)
    embedder = embedding_model(args)
    analyzer = MorphemeAnalyzer()
    cached = terms_cache_path(corpus.passages.parent, analyzer)
    if not cached.exists():
        raise FileNotFoundError(f"{cached}: no terms of this corpus; the inprocess backend leaves them (run it first)")
    t = time.perf_counter()
    documents = list(read_passages(corpus.passages))
    terms = load_terms(cached)
    vectors = np.load(corpus.vectors, allow_pickle=False)
    seconds["read documents, cached terms and vectors"] = time.perf_counter() - t
    gc.collect()
    memory["client before the build (python, torch, model, documents, terms, vectors)"] = rss_mib()

    queries = dev_questions(args.data_dir, args.queries, args.seed)
    exact = "exact" in args.dense or "ann" in args.skipped
    settings = RetrieverSettings(method="hybrid", ann="off" if exact else "on")
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        t = time.perf_counter()
        store = MilvusStore.build(
            documents,
            settings,
            uri=str(Path(tmp) / "kqa.db"),
            embedder=ReplayEmbedder(embedder, vectors),
            analyzer=ReplayAnalyzer(analyzer, terms),
        )
        seconds[f"build: write passages, BM25 weights, vectors ({store.dense_index_kind} dense index)"] = (
            time.perf_counter() - t
        )
        t = time.perf_counter()
        store.client.flush(store.collection)  # sealed segments, indexed: what a reopened store searches
        store.client.load_collection(store.collection)
        seconds["flush + load"] = time.perf_counter() - t
        del terms
        gc.collect()
        result["disk_mib"] = {"total (Milvus Lite file and its folder)": dir_mib(Path(tmp))}
        memory["engine (Milvus Lite server processes)"] = tree_rss_mib() - rss_mib()
        memory["client (this process)"] = rss_mib()

        for q in queries[:3]:
            store.retrieve(q, args.k)
        query_vectors, embed_times = {}, []
        for q in queries:
            t = time.perf_counter()
            query_vectors[q] = embedder.embed_queries([q])[0]
            embed_times.append(time.perf_counter() - t)
        live, fast = store.embedder, ReplayEmbedder(embedder, vectors, query_vectors)
        latency = {"query embedding": stats_ms(embed_times)}

        def timed(label: str, method: str, query_embedder) -> None:
            store.embedder = query_embedder
            latency[label] = stats_ms(time_queries(lambda q: store.retrieve(q, args.k, method=method), queries))

        kind = store.dense_index_kind.lower()
        timed("sparse", "sparse", fast)
        timed(f"dense {kind}, search only", "dense", fast)
        timed(f"dense {kind} + query embedding", "dense", live)
        timed(f"hybrid {kind}, search only", "hybrid", fast)
        timed(f"hybrid {kind} + query embedding", "hybrid", live)
        store.embedder = fast
        found = {kind: rankings(store, queries, args.k, ("sparse", "dense", "hybrid"))}

        if exact and "ann" in args.dense and not args.skipped.get("ann"):
            t = time.perf_counter()
            rebuild_dense_index_as_hnsw(store, settings.ann_settings())
            result["ann"] = {"ann_build_s": time.perf_counter() - t}
            memory["engine with the HNSW index"] = tree_rss_mib() - rss_mib()
            timed("dense hnsw, search only", "dense", fast)
            timed("dense hnsw + query embedding", "dense", live)
            timed("hybrid hnsw + query embedding", "hybrid", live)
            store.embedder = fast
            found["hnsw"] = rankings(store, queries, args.k, ("dense", "hybrid"))
        result["latency"] = latency
        store.close()

    # The in-process index of the same terms and vectors: the reference the rankings are compared with.
    reference = Retriever(
        documents,
        split_corpus(documents),
        settings,
        analyzer=analyzer,
        sparse=BM25Index.build(load_terms(cached)),
        embedder=PrecomputedQueries(embedder, query_vectors),
        dense=DenseIndex(vectors),
    )
    expected = rankings(reference, queries, args.k, ("sparse", "dense", "hybrid"))
    result["parity_with_inprocess_exact"] = {
        f"{method} ({kind})": overlap(expected[method], ranked)
        for kind, by_method in found.items()
        for method, ranked in by_method.items()
    }
    if "hnsw" in found:
        result.setdefault("ann", {})
        exact_top = [top_k(row, RECALL_K) for row in reference.dense.scores(np.stack(list(query_vectors.values())))]
        ids = [[reference.passages[i].id for i in row] for row in exact_top]
        result["ann"][f"ann_recall@{RECALL_K}"] = overlap(ids, [r[:RECALL_K] for r in found["hnsw"]["dense"]])[
            "overlap"
        ]
    memory["peak (whole run, client)"] = peak_rss_mib()
    return result


def rebuild_dense_index_as_hnsw(store, ann) -> None:
    """Swap the collection's FLAT dense index for HNSW with kqa's graph parameters (what `ann="on"`
    builds), so one collection serves both measurements."""
    client, name = store.client, store.collection
    client.release_collection(name)
    client.drop_index(name, "dense")
    params = client.prepare_index_params()
    params.add_index(
        "dense", index_type="HNSW", metric_type="IP", params={"M": ann.m, "efConstruction": ann.ef_construction}
    )
    client.create_index(name, params)
    client.load_collection(name)
    store._dense_kind = None
    if store.dense_index_kind != "HNSW":
        raise RuntimeError(f"{name}: the dense index is {store.dense_index_kind}, not HNSW, after the rebuild")


# ----------------------------------------------------------------------------------------------
# The parent: one process per size, the tables


def run_size(args, argv: list[str], num_passages: int, backend: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        child_out = Path(f.name)
    try:
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", str(num_passages)]
        command += ["--child-backend", backend, "--child-out", str(child_out)]
        subprocess.run(command, check=True)
        return json.loads(child_out.read_text(encoding="utf-8"))
    finally:
        child_out.unlink(missing_ok=True)


def print_engine_result(r: dict) -> None:
    n = r["passages"]
    print_table(
        [{"step": k, "s": v} for k, v in r["seconds"].items()]
        + (
            [{"step": "HNSW index (Milvus)", "s": r["ann"]["ann_build_s"]}] if "ann_build_s" in r.get("ann", {}) else []
        ),
        [("step", "step", ""), ("s", "seconds", ".1f")],
        title=f"{n:,} passages, Milvus Lite: build (terms and vectors of the in-process run)",
    )
    print_table(
        [{"what": k, "mib": v} for k, v in r["memory_mib"].items()]
        + [{"what": f"on disk: {k}", "mib": v} for k, v in r["disk_mib"].items()],
        [("what", "memory", ""), ("mib", "MiB", ",.1f")],
        title=f"{n:,} passages, Milvus Lite: memory",
    )
    print_table(
        [{"query": k, **v} for k, v in r["latency"].items()],
        [("query", "query (one at a time)", ""), ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f")],
        title=f"{n:,} passages, Milvus Lite: latency over {r['latency']['sparse']['n']} dev questions, top {r['k']}",
    )
    print_table(
        [{"ranking": k, **v} for k, v in r["parity_with_inprocess_exact"].items()],
        [("ranking", "Milvus ranking", ""), ("overlap", "top-k overlap", ".4f"), ("identical", "identical", "d"),
         ("queries", "of", "d")],
        title=f"{n:,} passages: Milvus rankings against the in-process index's exact ones",
    )  # fmt: skip
    if f"ann_recall@{RECALL_K}" in r.get("ann", {}):
        print(f"Milvus HNSW: recall@{RECALL_K} {r['ann'][f'ann_recall@{RECALL_K}']:.3f} against exact search")


def print_results(results: list[dict], skipped: dict[str, str]) -> None:
    for r in results:
        if r.get("backend") == "milvus":
            print_engine_result(r)
            continue
        n = r["passages"]
        print_table(
            [{"step": k, "s": v} for k, v in r["seconds"].items()]
            + [{"step": "embedding passages (ESTIMATED)", "s": r["embedding_estimate"]["estimated_s"]}],
            [("step", "step", ""), ("s", "seconds", ".1f")],
            title=f"{n:,} passages: build ({r['embedding_estimate']['passages_per_s']:.1f} passages/s embedding, "
            f"on {r['embedding_estimate']['sample']} passages)",
        )
        print_table(
            [{"what": k, "mib": v} for k, v in r["memory_mib"].items()]
            + [{"what": f"on disk: {k}", "mib": v} for k, v in r["disk_mib"].items()],
            [("what", "memory", ""), ("mib", "MiB", ",.1f")],
            title=f"{n:,} passages: memory (vocabulary {r['vocabulary']:,} terms; Heaps' law of the real data "
            f"predicts {r['heaps_prediction']:,})",
        )
        print_table(
            [{"query": k, **v} for k, v in r["latency"].items()],
            [("query", "query (one at a time)", ""), ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f")],
            title=f"{n:,} passages: latency over {r['latency']['sparse']['n']} dev questions, top {r['k']}",
        )
        print_table(
            [{"step": k, "ms": v} for k, v in r["hybrid_breakdown_ms"].items()],
            [("step", "hybrid query step", ""), ("ms", "median ms", ".2f")],
        )
        if "ann" in r:
            ann = r["ann"]
            print(f"ANN: build {ann['ann_build_s']:.1f} s, recall@{RECALL_K} {ann[f'ann_recall@{RECALL_K}']:.3f}")
            print_table(
                [{"ef": int(ef), **v} for ef, v in ann.get("ef_search_sweep", {}).items()],
                [("ef", "efSearch", "d"), ("recall", f"recall@{RECALL_K}", ".3f"), ("p50_ms", "p50 ms", ".2f"),
                 ("p95_ms", "p95 ms", ".2f")],
                title=f"{n:,} passages: HNSW search alone (no embedding) by efSearch",
            )  # fmt: skip
        if "loaded" in r:
            print(f"loaded in a fresh process: {r['loaded']}")
        if r.get("hybrid_profile"):
            print("\nhybrid queries (20), cProfile by own time:\n" + r["hybrid_profile"])
    for what, why in skipped.items():
        print(f"skipped {what}: {why}")


def kqa_source() -> dict:
    """Where the measured kqa came from: its folder and git commit (+ whether the tree had changes)."""
    import kqa

    root = Path(kqa.__file__).resolve().parent.parent
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run([*git, "status", "--porcelain", "kqa"], capture_output=True, text=True).stdout)
    except OSError:
        commit, dirty = None, None
    return {"path": str(root), "commit": commit or None, "uncommitted_changes": dirty}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, action="append", help="corpus size (repeat for several)")
    parser.add_argument("--backends", default="inprocess", help=f"comma-separated, of {BACKENDS}")
    parser.add_argument("--dense", default="exact,ann", help=f"comma-separated, of {DENSE_MODES}")
    parser.add_argument("--queries", type=int, default=200, help="dev questions timed (one at a time)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-sample", type=int, default=64, help="passages embedded to estimate passages/s")
    parser.add_argument("--embedding-model", type=Path, default=DEFAULT_EMBEDDING_MODEL)
    parser.add_argument(
        "--embedding-max-length",
        type=int,
        default=E5_MAX_POSITIONS,
        help="tokens embedded per text (e5's whole window; less only for smoke runs with a tiny model)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="the shared data (default: $KQA_DATA_DIR)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="corpora and cached vectors")
    parser.add_argument("--profile", type=int, default=15, help="cProfile the hybrid query: top N functions (0: off)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-backend", default="inprocess", help=argparse.SUPPRESS)
    parser.add_argument("--child-load", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--reuse-terms",
        action="store_true",
        help="read back the Kiwi terms an earlier run of the same corpus left (skips the analysis: a re-run)",
    )
    parser.add_argument(
        "--ef-search",
        default="32,64,128,256,512",
        help="HNSW efSearch values whose recall@10 and latency are measured on the built graph",
    )
    args = parser.parse_args(argv)
    if args.child_load is not None:
        child_load(args)
        return
    from common import default_data_dir

    args.ef_search = [int(v) for v in args.ef_search.split(",") if v]

    args.data_dir = args.data_dir or default_data_dir()
    backends = [b for b in args.backends.split(",") if b]
    args.dense = [d for d in args.dense.split(",") if d]
    for name, given, allowed in (("backend", backends, BACKENDS), ("dense", args.dense, DENSE_MODES)):
        if bad := sorted(set(given) - set(allowed)):
            parser.error(f"unknown {name} {bad}: choose from {allowed}")
    args.skipped = skipped_reasons(backends, args.dense)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        result = measure(args, args.child) if args.child_backend == "inprocess" else measure_milvus(args, args.child)
        result["k"] = args.k
        args.child_out.write_text(json.dumps(result, default=float) + "\n", encoding="utf-8")
        return
    if not args.passages:
        parser.error("give --passages N (one or more times)")
    if "milvus" in backends and "inprocess" not in backends:  # the in-process run of a size leaves its terms
        print("milvus without inprocess: the terms of an earlier in-process run of each size are read back")
    machine = machine_info()
    settings = settings_from_args(args)
    print_header(machine, settings)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    source = kqa_source()  # before the runs: the code they measure
    print(f"kqa: {source}")
    print(f"load average: {os.getloadavg()} (a busy machine slows every number here)")
    for what, why in args.skipped.items():
        print(f"skipping {what}: {why}")
    results = []
    for n in args.passages:
        for backend in [b for b in BACKENDS if b in backends and b not in args.skipped]:
            results.append({"backend": backend, **run_size(args, argv, n, backend)})
            write_json(  # after each run: a long run stopped later keeps what it measured
                args.out,
                machine=machine,
                settings=settings,
                command=[sys.executable, *sys.argv],
                kqa_source=source,
                load_average=os.getloadavg(),
                targets=TARGETS,
                skipped=args.skipped,
                results=results,
            )
            print_results(results[-1:], {})
    print_results([], args.skipped)


if __name__ == "__main__":
    main()
