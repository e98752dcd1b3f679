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

Backends (`--backends`): `inprocess` (kqa's `Retriever`), `milvus` (kqa.retrieval.milvus_store, when it
is importable); dense search (`--dense`): `exact` (numpy) and `ann` (`DenseIndex` with an approximate
graph, when kqa.retrieval.ann is importable). What cannot run is skipped with its reason, in the table.

    python benchmarks/bench_index_scale.py --passages 100000 --passages 1000000 --out scale.json
    python benchmarks/bench_index_scale.py --passages 2000 --queries 20 --embedding-model DIR   # a smoke run
"""

from __future__ import annotations

import argparse
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
    return "kqa.retrieval.milvus_store is importable, but this harness has no adapter for it yet (add one)"


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


def ann_rows(dense_index_cls, vectors, query_matrix, exact_top, k: int) -> tuple[dict, object]:
    from kqa.retrieval.ann import AnnSettings

    t = time.perf_counter()
    index = dense_index_cls(vectors, ann=AnnSettings(mode="on"))
    if not index.build_graph() or index.search_kind != "hnsw":  # the graph is built on request, not by the constructor
        raise RuntimeError(f"no HNSW graph was built over {len(vectors)} vectors")
    build = time.perf_counter() - t
    times, hits = [], 0
    for i in range(len(query_matrix)):
        t = time.perf_counter()
        found = index.search(query_matrix[i : i + 1], k)
        times.append(time.perf_counter() - t)
        ids = _ids_of(found)
        hits += len(set(ids[:k]) & set(exact_top[i][:k].tolist()))
    return {
        "ann_build_s": build,
        "ann_search": stats_ms(times),
        f"ann_recall@{k}": hits / (k * len(query_matrix)),
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


def measure(args, num_passages: int) -> dict:
    from kqa.retrieval import Embedder, EmbedderSettings, Retriever, RetrieverSettings
    from kqa.retrieval.corpus import split_corpus
    from kqa.retrieval.dense import DenseIndex
    from kqa.retrieval.fusion import top_k
    from kqa.retrieval.sparse import BM25Index, MorphemeAnalyzer

    result: dict = {"passages": num_passages, "seconds": {}, "memory_mib": {}}
    seconds, memory = result["seconds"], result["memory_mib"]

    t = time.perf_counter()
    corpus = make_corpus(
        num_passages,
        args.cache_dir / f"{num_passages}-seed{args.seed}",
        seed=args.seed,
        data_dir=args.data_dir,
        embedding_model=args.embedding_model,
        cache_dir=args.cache_dir,
        embedding_max_length=args.embedding_max_length,
    )
    seconds["generate (or reuse)"] = time.perf_counter() - t
    result["corpus"] = corpus.info
    embedder = Embedder.from_pretrained(
        args.embedding_model, device="cpu", settings=EmbedderSettings(max_length=args.embedding_max_length)
    )
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
    t = time.perf_counter()
    terms = analyzer.analyze_many([p.text for p in passages])
    seconds["analysis (Kiwi)"] = time.perf_counter() - t
    result["terms"] = sum(map(len, terms))
    t = time.perf_counter()
    sparse = BM25Index.build(terms)
    seconds["BM25 build"] = time.perf_counter() - t
    del terms
    gc.collect()
    memory["peak while building BM25"] = peak_rss_mib()
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
        ann, ann_index = ann_rows(DenseIndex, vectors, query_matrix, exact_top, RECALL_K)
        result["ann"] = ann
        ann_retriever = Retriever(
            documents, passages, settings, analyzer=analyzer, sparse=sparse, embedder=embedder, dense=ann_index
        )
        for label, method in (("dense ann + query embedding", "dense"), ("hybrid ann + query embedding", "hybrid")):
            latency[label] = stats_ms(
                time_queries(lambda q, m=method: ann_retriever.retrieve(q, args.k, method=m), queries)
            )
    memory["peak (whole run)"] = peak_rss_mib()
    return result


# ----------------------------------------------------------------------------------------------
# The parent: one process per size, the tables


def run_size(args, argv: list[str], num_passages: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        child_out = Path(f.name)
    try:
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", str(num_passages)]
        command += ["--child-out", str(child_out)]
        subprocess.run(command, check=True)
        return json.loads(child_out.read_text(encoding="utf-8"))
    finally:
        child_out.unlink(missing_ok=True)


def print_results(results: list[dict], skipped: dict[str, str]) -> None:
    for r in results:
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
    args = parser.parse_args(argv)
    from common import default_data_dir

    args.data_dir = args.data_dir or default_data_dir()
    backends = [b for b in args.backends.split(",") if b]
    args.dense = [d for d in args.dense.split(",") if d]
    for name, given, allowed in (("backend", backends, BACKENDS), ("dense", args.dense, DENSE_MODES)):
        if bad := sorted(set(given) - set(allowed)):
            parser.error(f"unknown {name} {bad}: choose from {allowed}")
    args.skipped = skipped_reasons(backends, args.dense)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        result = measure(args, args.child)
        result["k"] = args.k
        args.child_out.write_text(json.dumps(result, default=float) + "\n", encoding="utf-8")
        return
    if not args.passages:
        parser.error("give --passages N (one or more times)")
    if "inprocess" not in backends:
        parser.error("the inprocess backend is the reference every other one is compared with: keep it")
    machine = machine_info()
    settings = settings_from_args(args)
    print_header(machine, settings)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    source = kqa_source()  # before the runs: the code they measure
    print(f"kqa: {source}")
    print(f"load average: {os.getloadavg()} (a busy machine slows every number here)")
    for what, why in args.skipped.items():
        print(f"skipping {what}: {why}")
    results = [run_size(args, argv, n) for n in args.passages]
    print_results(results, args.skipped)
    write_json(
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


if __name__ == "__main__":
    main()
