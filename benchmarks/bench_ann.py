"""Benchmark approximate dense search (kqa/retrieval/ann.py, FAISS HNSW) against exact search, on
e5-like passage vectors: build time, index memory, query latency p50/p95 at k=10 and k=100, recall@10
against exact search for several efSearch values, with and without an allowed-passage mask.

Vectors. Isotropic random unit vectors are the hardest case for a graph index and nothing like real
sentence embeddings (e5's occupy a narrow cone: cosines of unrelated passages ~0.7-0.8), so the
vectors here are grown from real ones: passages of the SQuAD files in `--data-dir` (a random
`--real-passages` of them, up to `--max-length` tokens) are embedded once with `--embedding-model`
(cached in `--cache`, outside the repository), and each synthetic vector mixes two real passages
(weight w ~ U(0.5, 1) on the first) plus Gaussian noise with the real embeddings' own covariance (top
128 principal directions, scale `--noise`), renormalised. Queries are the real questions of the dev
files, embedded as queries (held out: never mixed into passages).
The script prints how close each query's best passage is, real vs synthetic, as a check.

Reference in the same run: exact search (`DenseIndex` without a graph, numpy) over the same vectors,
which also gives the ground truth. `--exact-sizes`: exact search latency alone at more sizes (where the
default ANN threshold comes from).

    python benchmarks/bench_ann.py --sizes 100000 --out ann.json          # after README command 1
    python benchmarks/bench_ann.py --sizes 100000,1000000 --out ann.json  # ~8 GiB RAM, a long build
    python benchmarks/bench_ann.py --smoke --out ann.json                 # random vectors, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    REPO_ROOT,
    default_data_dir,
    machine_info,
    percentile,
    print_header,
    print_table,
    settings_from_args,
    write_json,
)  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))  # this checkout's kqa, not an installed one

RECALL_AT = 10
TIMED_QUESTIONS = 30  # questions embedded one at a time for the query-embedding latency
MASK_FRACTIONS = (0.5, 0.1, 0.01)  # share of passages a metadata filter lets through (uniform at random)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000", help="comma-separated passage counts")
    p.add_argument("--exact-sizes", default="10000,30000,100000,200000,300000", help="exact latency only")
    p.add_argument("--ef-search", default="16,32,64,128,256", help="efSearch values to measure")
    p.add_argument("--m", type=int, default=None, help="HNSW M (default: kqa's)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW efConstruction (default: kqa's)")
    p.add_argument("--queries", type=int, default=200, help="real questions used as queries")
    p.add_argument("--real-passages", type=int, default=600, help="real passages embedded (a random sample)")
    p.add_argument("--max-length", type=int, default=256, help="tokens of a passage embedded (speed on CPU)")
    p.add_argument("--noise", type=float, default=0.5, help="noise scale, in standard deviations of real data")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="$KQA_DATA_DIR or ../shared/data")
    p.add_argument("--embedding-model", default=str(REPO_ROOT / "models" / "e5-small"))
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kqa_bench_ann_e5.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="random low-dimensional vectors, tiny sizes")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Vectors


def real_embeddings(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(passage vectors, query vectors, query-embedding seconds of each query) of the shared data."""
    if args.cache.is_file():
        with np.load(args.cache, allow_pickle=False) as cached:
            print(f"real embeddings: {args.cache} (cached)")
            return cached["passages"], cached["queries"], cached["query_seconds"]
    from kqa.retrieval import Embedder, EmbedderSettings, PassageSettings, load_corpus, split_corpus

    files = sorted(args.data_dir.rglob("*.json"))
    documents, _ = load_corpus(files)
    passages = [p.text for p in split_corpus(documents, PassageSettings())]
    rng = np.random.default_rng(args.seed)
    passages = [passages[i] for i in sorted(rng.permutation(len(passages))[: args.real_passages])]
    questions = []
    for f in files:
        if "dev" in f.name.lower():
            data = json.loads(f.read_text(encoding="utf-8"))["data"]
            questions += [qa["question"] for a in data for para in a["paragraphs"] for qa in para["qas"]]
    questions = [questions[i] for i in rng.permutation(len(questions))[: args.queries]]
    embedder = Embedder.from_pretrained(
        args.embedding_model, device="cpu", settings=EmbedderSettings(max_length=args.max_length)
    )
    t = time.perf_counter()
    passage_vectors = embedder.embed_passages(passages, show_progress=True)
    print(f"embedded {len(passages)} passages in {time.perf_counter() - t:.0f} s")
    query_vectors = embedder.embed_queries(questions)  # batched; the latency is timed on a few, one at a time
    query_seconds = []
    for q in questions[:TIMED_QUESTIONS]:  # as a server embeds a question
        t = time.perf_counter()
        embedder.embed_queries([q])
        query_seconds.append(time.perf_counter() - t)
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.cache, passages=passage_vectors, queries=query_vectors, query_seconds=query_seconds)
    return passage_vectors, query_vectors, np.array(query_seconds)


def synthesize(real: np.ndarray, n: int, noise: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors like `real`: a mix of two real vectors plus noise with the real covariance."""
    rng = np.random.default_rng(seed)
    mean = real.mean(0)
    _, singular, directions = np.linalg.svd(real - mean, full_matrices=False)
    rank = min(128, directions.shape[0])
    scaled = (singular[:rank, None] / np.sqrt(real.shape[0])) * directions[:rank]  # [rank, d]
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for begin in range(0, n, chunk):
        m = min(chunk, n - begin)
        a, b = rng.integers(0, real.shape[0], m), rng.integers(0, real.shape[0], m)
        w = rng.uniform(0.5, 1.0, (m, 1)).astype(np.float32)
        block = w * real[a] + (1 - w) * real[b]
        block += noise * (rng.standard_normal((m, rank), dtype=np.float32) @ scaled.astype(np.float32))
        out[begin : begin + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


# ----------------------------------------------------------------------------------------------
# Measurements


def latencies(fn, queries: np.ndarray) -> dict:
    """p50 / p95 in ms of fn(one query), each query alone (as a server searches)."""
    fn(queries[:1])  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t)
    return {"p50_ms": percentile(times, 50) * 1e3, "p95_ms": percentile(times, 95) * 1e3}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def exact_latency_rows(real, queries, sizes, args) -> list[dict]:
    from kqa.retrieval.ann import AnnSettings
    from kqa.retrieval.dense import DenseIndex

    rows = []
    for n in sizes:
        index = DenseIndex(synthesize(real, n, args.noise, args.seed), ann=AnnSettings(mode="off"))
        row = {"passages": n}
        for k in (10, 100):
            stats = latencies(lambda q, k=k: index.search(q, k), queries)
            row.update({f"k{k}_{key}": v for key, v in stats.items()})
        rows.append(row)
        index = None  # free the vectors before the next size
        gc.collect()
    return rows


def measure_size(real, queries, n, ef_values, args) -> tuple[dict, list[dict], list[dict]]:
    from kqa.retrieval.ann import AnnSettings
    from kqa.retrieval.dense import DenseIndex

    vectors = synthesize(real, n, args.noise, args.seed)
    exact = DenseIndex(vectors, ann=AnnSettings(mode="off"))
    truth, truth_scores = exact.search(queries, RECALL_AT)
    masks = {f: np.random.default_rng(args.seed + 1).random(n) < f for f in MASK_FRACTIONS}
    masked_truth = {f: exact.search(queries, RECALL_AT, m)[0] for f, m in masks.items()}
    base = {"passages": n, "mean_top1_cosine": float(truth_scores[:, 0].mean())}
    exact_row = {"search": "exact (numpy)", **base}
    for k in (10, 100):
        exact_row.update({f"k{k}_{key}": v for key, v in latencies(lambda q, k=k: exact.search(q, k), queries).items()})
    exact_row["index_mib"] = vectors.nbytes / 2**20

    defaults = AnnSettings(mode="on")
    settings = dataclasses.replace(
        defaults, m=args.m or defaults.m, ef_construction=args.ef_construction or defaults.ef_construction
    )
    graph_index = DenseIndex(vectors.copy(), ann=settings)
    exact = vectors = None  # the graph holds its own copy: keep one in memory
    gc.collect()
    t = time.perf_counter()
    graph_index.build_graph()
    build_s = time.perf_counter() - t
    graph = graph_index.graph
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(Path(tmp) / "dense.hnsw")
        file_mib = (Path(tmp) / "dense.hnsw").stat().st_size / 2**20
    build = {
        **base,
        "m": settings.m,
        "ef_construction": settings.ef_construction,
        "build_s": build_s,
        "index_mib": graph.nbytes() / 2**20,
        "graph_file_mib": file_mib,
    }
    ann_rows, mask_rows = [], []
    for ef in ef_values:
        graph.settings = dataclasses.replace(settings, ef_search=ef)
        found, _ = graph_index.search(queries, RECALL_AT)
        row = {"search": f"hnsw efSearch={ef}", "passages": n, "recall@10": recall(found, truth)}
        for k in (10, 100):
            stats = latencies(lambda q, k=k: graph_index.search(q, k), queries)
            row.update({f"k{k}_{key}": v for key, v in stats.items()})
        ann_rows.append(row)
    graph.settings = settings
    for f, mask in masks.items():
        found, _ = graph_index.search(queries, RECALL_AT, mask)
        assert mask[found].all(), "a disallowed passage was returned"
        row = {
            "passages": n,
            "allowed": f,
            "ef_search": settings.ef_search,
            "recall@10": recall(found, masked_truth[f]),
        }
        row.update(
            {f"k10_{key}": v for key, v in latencies(lambda q: graph_index.search(q, 10, mask), queries).items()}
        )
        mask_rows.append(row)
    graph_index = graph = None
    gc.collect()
    return build, [exact_row, *ann_rows], mask_rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from kqa.extras import require

    require("retrieval", "faiss")
    import faiss

    machine = {**machine_info(), "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}
    print_header(machine, settings_from_args(args))
    sizes = [int(s) for s in args.sizes.split(",")]
    exact_sizes = [int(s) for s in args.exact_sizes.split(",") if s]
    ef_values = [int(s) for s in args.ef_search.split(",")]
    if args.smoke:
        rng = np.random.default_rng(args.seed)
        real = rng.standard_normal((300, 32)).astype(np.float32)
        real /= np.linalg.norm(real, axis=1, keepdims=True)
        queries, query_seconds = real[:20] + 0.1, np.zeros(20)
        sizes, exact_sizes, ef_values = [2000], [1000], [16, 64]
    else:
        real, queries, query_seconds = real_embeddings(args)
    real_top1 = float((queries @ real.T).max(axis=1).mean())
    print(
        f"{real.shape[0]} real passage vectors, {queries.shape[0]} queries; mean best cosine of a query among "
        f"the real passages: {real_top1:.3f} (the synthetic sets' own: column mean_top1_cosine)"
    )

    builds, searches, masked = [], [], []
    for n in sizes:
        build, rows, mask_rows = measure_size(real, queries, n, ef_values, args)
        builds.append(build)
        searches += rows
        masked += mask_rows
    exact_rows = exact_latency_rows(real, queries, exact_sizes, args)
    embed = {"p50_ms": percentile(query_seconds, 50) * 1e3, "p95_ms": percentile(query_seconds, 95) * 1e3}

    print_table(
        builds,
        [
            ("passages", "passages", ","),
            ("m", "M", ""),
            ("ef_construction", "efC", ""),
            ("build_s", "build s", ".1f"),
            ("index_mib", "index MiB", ".0f"),
            ("graph_file_mib", "file MiB", ".0f"),
            ("mean_top1_cosine", "top-1 cos", ".3f"),
        ],
        "HNSW build (index = vectors + links in memory; file = links only, the vectors are the embeddings)",
    )
    print_table(
        searches,
        [
            ("search", "search", ""),
            ("passages", "passages", ","),
            ("recall@10", "recall@10", ".4f"),
            ("k10_p50_ms", "k=10 p50 ms", ".2f"),
            ("k10_p95_ms", "k=10 p95 ms", ".2f"),
            ("k100_p50_ms", "k=100 p50 ms", ".2f"),
            ("k100_p95_ms", "k=100 p95 ms", ".2f"),
        ],
        "Search, one query at a time (recall@10 against exact search in the same run)",
    )
    print_table(
        masked,
        [
            ("passages", "passages", ","),
            ("allowed", "allowed", ".2f"),
            ("ef_search", "efSearch", ""),
            ("recall@10", "recall@10", ".4f"),
            ("k10_p50_ms", "k=10 p50 ms", ".2f"),
            ("k10_p95_ms", "k=10 p95 ms", ".2f"),
        ],
        "Search with an allowed-passage mask (HNSW with an IDSelectorBitmap; exact below 5% allowed)",
    )
    print_table(
        exact_rows,
        [
            ("passages", "passages", ","),
            ("k10_p50_ms", "k=10 p50 ms", ".2f"),
            ("k10_p95_ms", "k=10 p95 ms", ".2f"),
            ("k100_p50_ms", "k=100 p50 ms", ".2f"),
            ("k100_p95_ms", "k=100 p95 ms", ".2f"),
        ],
        "Exact search alone, by size (where the default ANN threshold comes from)",
    )
    print(f"\nquery embedding (e5, one question, CPU): p50 {embed['p50_ms']:.1f} ms, p95 {embed['p95_ms']:.1f} ms")
    write_json(
        args.out,
        machine=machine,
        settings=settings_from_args(args),
        command=" ".join(sys.argv),
        builds=builds,
        searches=searches,
        masked=masked,
        exact_by_size=exact_rows,
        query_embedding=embed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
