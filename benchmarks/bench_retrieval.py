"""Benchmark open-domain QA over the shared data: retrieval recall, retrieve-then-read EM/F1 against
reading the gold passage, build time / memory / latency, and how they grow with the corpus.

The open setting: the corpus is every context of the SQuAD-format files in `--data-dir` (the four
shared files: about 1,500 distinct contexts, 1,800 passages), the questions are those of its `*dev*.json`
files, and a question's gold passage is a passage of its own context that holds a gold answer span.

- recall@1/5/20 of the gold passage for BM25 over Kiwi morphemes, BM25 over character bigrams, dense
  (e5 embeddings of `--embedding-model`), and hybrids (RRF and min-max score fusion);
- end to end: `RetrieveAndRead` (hybrid, `--read-passages` passages) vs `QuestionAnswerer` on the gold
  context, both with the reader `--reader` (the main job's model), official EM/F1;
- build time and memory of each part; query latency p50/p95, retrieval alone and with reading;
- scaling: the corpus replicated `--scales` times (copies are new documents with the same text, so
  their terms and embeddings are the 1× ones, reused: the analysis and embedding times of a copy are
  projected from the 1× per-passage time, the rest is measured); plus exact dense search over
  `--dense-only-sizes` random unit vectors, to show where an approximate index would start to pay.

    python benchmarks/bench_retrieval.py --out results.json            # after README command 1
    python benchmarks/bench_retrieval.py --smoke --out results.json    # tiny random models, a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, machine_info, percentile, print_header, print_table, settings_from_args, write_json  # noqa: E402

RECALL_AT = (1, 5, 20)
DEFAULT_HYBRID = "hybrid score 0.5 (morphemes + e5): default"
TARGETS = {"recall@5": {"tydi": 0.90, "korquad": 0.95}, "f1_gap": 10.0}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# ----------------------------------------------------------------------------------------------
# Data


def load_questions(dev_file: Path, doc_id_of_context: dict[str, str], limit: int | None) -> list[dict]:
    from kqa.squad import squad_questions

    data = json.loads(dev_file.read_text(encoding="utf-8-sig"))
    rows = []
    for item in squad_questions(data, str(dev_file)):
        qa, context = item.qa, item.paragraph["context"]
        answers = qa["answers"]
        rows.append(
            {
                "id": str(qa["id"]),
                "question": qa["question"],
                "context": context,
                "doc_id": doc_id_of_context.get(context, ""),  # "" outside a smoke corpus
                "spans": [(a["answer_start"], a["answer_start"] + len(a["text"])) for a in answers],
                "answers": {
                    "text": [a["text"] for a in answers],
                    "answer_start": [a["answer_start"] for a in answers],
                },
            }
        )
    return rows[:limit] if limit else rows


def dataset_name(path: Path) -> str:
    return "korquad" if "korquad" in path.name.lower() else "tydi" if "tydi" in path.name.lower() else path.stem


def is_gold(passage, question: dict) -> bool:
    return passage.doc_id == question["doc_id"] and any(
        passage.start <= s and e <= passage.end for s, e in question["spans"]
    )


# ----------------------------------------------------------------------------------------------
# Smoke-run models


def tiny_models(texts: list[str], out: Path) -> tuple[Path, Path]:
    """A random-init BERT encoder (embedder) and a random-init kqa QA model (reader) over a character
    tokenizer of `texts`: the pipeline runs end to end, the numbers mean nothing."""
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_char_tokenizer, tiny_bert_config

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer(texts)
    config = tiny_bert_config(
        len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model = QuestionAnsweringModel.from_config(config)
    model.backbone.save_pretrained(out / "embedder", safe_serialization=True)
    tokenizer.save_pretrained(out / "embedder")
    model.save_pretrained(out / "reader", tokenizer=tokenizer, kqa_config={"max_seq_length": 128, "doc_stride": 32})
    return out / "embedder", out / "reader"


# ----------------------------------------------------------------------------------------------
# Measurements


def recall_table(retrievers: dict, questions_by_set: dict[str, list[dict]], depth: int) -> tuple[list[dict], dict]:
    rows, hits_by = [], {}
    for name, (retriever, method) in retrievers.items():
        row = {"retriever": name}
        for set_name, questions in questions_by_set.items():
            results = retriever.retrieve_many([q["question"] for q in questions], depth, method=method)
            first_hit = [
                next((h.rank for h in found if is_gold(h.passage, q)), None) for q, found in zip(questions, results)
            ]
            hits_by[(name, set_name)] = first_hit
            for k in RECALL_AT:
                row[f"{set_name} R@{k}"] = float(np.mean([r is not None and r <= k for r in first_hit]))
        rows.append(row)
    return rows, hits_by


def latency(fn, inputs: list, warmup: int = 3) -> dict:
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return {"p50_ms": 1000 * percentile(times, 50), "p95_ms": 1000 * percentile(times, 95), "n": len(times)}


def end_to_end(pipeline, reader, questions: list[dict], read_passages: list[int], method: str) -> dict:
    """Gold-passage reading, then retrieve-and-read with each number of passages; last, the largest
    number again with a uniform P(passage) (an infinite temperature): answers ranked by the reader alone."""
    from kqa.metric import score_predictions
    from kqa.retrieval import RetrieveAndRead

    t = time.perf_counter()
    gold = reader.predict_rows([{"id": q["id"], "question": q["question"], "context": q["context"]} for q in questions])
    scores = score_predictions(questions, {k: p.text for k, p in gold.items()})
    out = {"gold passage": {"em": scores.exact_match, "f1": scores.f1, "seconds": time.perf_counter() - t}}
    for k in read_passages:
        t = time.perf_counter()
        results = pipeline.ask_many([q["question"] for q in questions], passages=k, method=method)
        seconds = time.perf_counter() - t
        predictions = {q["id"]: (r.answers[0].text if r.answers else "") for q, r in zip(questions, results)}
        scores = score_predictions(questions, predictions)
        out[f"{method}, top {k} passages"] = {"em": scores.exact_match, "f1": scores.f1, "seconds": seconds}
    k = max(read_passages)
    reader_alone = RetrieveAndRead(pipeline.retriever, reader, passages=k, passage_temperature=1e9)
    t = time.perf_counter()
    results = reader_alone.ask_many([q["question"] for q in questions], method=method)
    seconds = time.perf_counter() - t
    scores = score_predictions(
        questions, {q["id"]: (r.answers[0].text if r.answers else "") for q, r in zip(questions, results)}
    )
    out[f"{method}, top {k}, reader alone ranks"] = {"em": scores.exact_match, "f1": scores.f1, "seconds": seconds}
    return out


def replicate(retriever, terms: list[list[str]] | None, copies: int):
    """The corpus `copies` times over (copies are new documents with the same text) and its indexes."""
    from kqa.retrieval import BM25Index, DenseIndex, Document, Passage, Retriever

    documents = [
        Document(id=f"{d.id}~{c}" if c else d.id, title=d.title, text=d.text, source=d.source)
        for c in range(copies)
        for d in retriever.documents
    ]
    n = len(retriever.passages)
    passages = [
        Passage(
            index=c * n + p.index,
            doc_id=f"{p.doc_id}~{c}" if c else p.doc_id,
            title=p.title,
            text=p.text,
            start=p.start,
            end=p.end,
        )
        for c in range(copies)
        for p in retriever.passages
    ]
    seconds = {}
    sparse = dense = None
    if terms is not None:
        t = time.perf_counter()
        sparse = BM25Index.build(terms * copies)
        seconds["bm25"] = time.perf_counter() - t
    if retriever.dense is not None:
        t = time.perf_counter()
        dense = DenseIndex(np.tile(retriever.dense.embeddings, (copies, 1)))
        seconds["stack embeddings"] = time.perf_counter() - t
    big = Retriever(
        documents,
        passages,
        retriever.settings,
        analyzer=retriever.analyzer,
        sparse=sparse,
        embedder=retriever.embedder,
        dense=dense,
        info=retriever.info,
    )
    return big, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--embedding-model", default=str(REPO_ROOT / "models" / "e5-small"))
    parser.add_argument("--reader", default=str(REPO_ROOT / "outputs" / "offline-e5-small" / "best"))
    parser.add_argument("--read-passages", default="1,3,5", help="passages read per question, comma-separated")
    parser.add_argument("--e2e-method", default="hybrid", help="retrieval method of the end-to-end rows")
    parser.add_argument("--scales", default="1,10,100", help="corpus replication factors")
    parser.add_argument("--dense-only-sizes", default="1000000", help="random unit vectors for exact dense search")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--read-latency-queries", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny random models, 80 documents, 20 questions per set")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()

    from kqa.inference import QuestionAnswerer
    from kqa.retrieval import (
        BM25Index,
        DenseIndex,
        Embedder,
        PassageSettings,
        RetrieveAndRead,
        Retriever,
        RetrieverSettings,
        load_corpus,
    )
    from kqa.retrieval.corpus import split_corpus
    from kqa.retrieval.fusion import top_k
    from kqa.retrieval.sparse import make_analyzer

    settings = settings_from_args(args)
    machine = machine_info()
    print_header(machine, settings)
    files = sorted(args.data_dir.rglob("*.json"))
    dev_files = [f for f in files if "dev" in f.name.lower()]
    read_passages = [int(k) for k in args.read_passages.split(",")]
    scales = [int(s) for s in args.scales.split(",")]

    # -- corpus ----------------------------------------------------------------------------------
    rss0 = rss_mib()
    documents, report = load_corpus(files)
    limit = None
    if args.smoke:  # the dev files' first documents, so their first questions have their gold passage
        keep = {d.id for d in documents if "dev" in d.id.lower()}
        documents = [d for d in documents if d.id in keep][:40] + [d for d in documents if d.id not in keep][:40]
        limit = 20
    doc_id_of_context: dict[str, str] = {}
    for d in documents:
        doc_id_of_context.setdefault(d.text, d.id)
    questions_by_set = {}
    for f in dev_files:
        questions = [q for q in load_questions(f, doc_id_of_context, None) if q["doc_id"]]
        questions_by_set[dataset_name(f)] = questions[:limit] if limit else questions
    passages = split_corpus(documents, PassageSettings())
    print(
        f"corpus: {report.summary()}; {len(documents)} documents, {len(passages)} passages; questions: "
        + ", ".join(f"{k} {len(v)}" for k, v in questions_by_set.items())
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench_retrieval_"))
    embedding_model, reader_dir = args.embedding_model, args.reader
    if args.smoke:
        embedding_model, reader_dir = tiny_models(
            [d.text for d in documents] + [q["question"] for qs in questions_by_set.values() for q in qs], tmp
        )

    # -- build: each part once, timed; the retrievers share them -----------------------------------
    build = {}
    texts = [p.text for p in passages]
    terms, analyzers, sparse = {}, {}, {}
    for name in ("morphemes", "bigrams"):
        t = time.perf_counter()
        analyzers[name] = make_analyzer(name)
        terms[name] = analyzers[name].analyze_many(texts)
        build[f"analyze ({name})"] = time.perf_counter() - t
        t = time.perf_counter()
        sparse[name] = BM25Index.build(terms[name])
        build[f"bm25 index ({name})"] = time.perf_counter() - t
    t = time.perf_counter()
    embedder = Embedder.from_pretrained(embedding_model, device="cpu")
    build["load embedding model"] = time.perf_counter() - t
    t = time.perf_counter()
    embeddings = embedder.embed_passages(texts, show_progress=True)
    build["embed passages"] = time.perf_counter() - t
    dense = DenseIndex(embeddings)

    def retriever(analyzer_name, with_dense, fusion):
        s = RetrieverSettings(
            method="hybrid" if analyzer_name and with_dense else "sparse" if analyzer_name else "dense",
            analyzer=analyzer_name,
            fusion=fusion,
        )
        return Retriever(
            documents,
            passages,
            s,
            analyzer=analyzers.get(analyzer_name),
            sparse=sparse.get(analyzer_name),
            embedder=embedder if with_dense else None,
            dense=dense if with_dense else None,
        )

    retrievers = {
        "bm25 morphemes": (retriever("morphemes", False, "score"), "sparse"),
        "bm25 bigrams": (retriever("bigrams", False, "score"), "sparse"),
        "dense e5": (retriever(None, True, "score"), "dense"),
        DEFAULT_HYBRID: (retriever("morphemes", True, "score"), "hybrid"),
        "hybrid rrf (morphemes + e5)": (retriever("morphemes", True, "rrf"), "hybrid"),
        "hybrid score 0.5 (bigrams + e5)": (retriever("bigrams", True, "score"), "hybrid"),
        "hybrid rrf (bigrams + e5)": (retriever("bigrams", True, "rrf"), "hybrid"),
    }
    default = retrievers[DEFAULT_HYBRID][0]
    index_dir = default.save(tmp / "index")
    t = time.perf_counter()
    Retriever.load(index_dir, embedder=embedder)
    build["load saved hybrid index"] = time.perf_counter() - t
    build_rows = [{"part": k, "seconds": v} for k, v in build.items()]
    print_table(
        build_rows,
        [("part", "part", "s"), ("seconds", "seconds", ".2f")],
        title=f"build ({len(passages)} passages; hybrid index on disk {dir_mib(index_dir):.1f} MiB, "
        f"RSS {rss_mib() - rss0:+.0f} MiB since start incl. models)",
    )

    # -- recall ----------------------------------------------------------------------------------
    recall_rows, _ = recall_table(retrievers, questions_by_set, max(RECALL_AT))
    columns = [("retriever", "retriever", "s")] + [
        (f"{s} R@{k}", f"{s} R@{k}", ".3f") for s in questions_by_set for k in RECALL_AT
    ]
    print_table(recall_rows, columns, title="recall of the gold passage")

    # -- end to end -----------------------------------------------------------------------------
    reader = QuestionAnswerer.from_pretrained(reader_dir, device="cpu")
    e2e_rows = []
    for set_name, questions in questions_by_set.items():
        pipeline = RetrieveAndRead(default, reader)
        for setting, result in end_to_end(pipeline, reader, questions, read_passages, args.e2e_method).items():
            e2e_rows.append({"set": set_name, "setting": setting, **result})
    print_table(
        e2e_rows,
        [
            ("set", "set", "s"),
            ("setting", "setting", "s"),
            ("em", "EM", ".2f"),
            ("f1", "F1", ".2f"),
            ("seconds", "s", ".1f"),
        ],
        title=f"end to end, reader {reader_dir}",
    )

    # -- latency and scaling ----------------------------------------------------------------------
    all_questions = [q["question"] for qs in questions_by_set.values() for q in qs]
    lat_queries = all_questions[: args.latency_queries]
    scale_rows = []
    for copies in scales:
        gc.collect()
        rss_before = rss_mib()
        big, seconds = replicate(default, terms["morphemes"], copies) if copies > 1 else (default, {})
        row = {
            "copies": copies,
            "passages": len(big.passages),
            "analyze s (proj.)": build["analyze (morphemes)"] * copies,
            "embed s (proj.)": build["embed passages"] * copies,
            "bm25 s": seconds.get("bm25", build["bm25 index (morphemes)"]),
            "RSS MiB": rss_mib() - rss_before if copies > 1 else float("nan"),
            "embeddings MiB": big.dense.embeddings.nbytes / 2**20,
        }
        for method in ("sparse", "dense", "hybrid"):
            row[f"{method} p50 ms"], row[f"{method} p95 ms"] = _pair(
                latency(lambda q, m=method, r=big: r.retrieve(q, 20, method=m), lat_queries)
            )
        if copies == 1:
            pipeline = RetrieveAndRead(big, reader, passages=5)
            read = latency(lambda q: pipeline.ask(q), all_questions[: args.read_latency_queries])
            row["retrieve+read(5) p50 ms"], row["retrieve+read(5) p95 ms"] = read["p50_ms"], read["p95_ms"]
        scale_rows.append(row)
        big = None  # the next copy is built without this one in memory
    print_table(
        scale_rows,
        [(k, k, "d" if k in ("copies", "passages") else ".1f") for k in scale_rows[0]],
        title="scaling (copies of the corpus; analysis and embedding projected from 1x)",
    )

    dense_rows = []
    rng = np.random.default_rng(0)
    query_vectors = embedder.embed_queries(lat_queries[:50])
    for size in [int(s) for s in args.dense_only_sizes.split(",") if s]:
        vectors = rng.standard_normal((size, embeddings.shape[1]), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = DenseIndex(vectors)
        del vectors
        stats = latency(lambda v, i=index: top_k(i.scores(v)[0], 20), list(query_vectors))
        dense_rows.append({"vectors": size, "MiB": index.embeddings.nbytes / 2**20, **stats})
        index = None
    if dense_rows:
        print_table(
            dense_rows,
            [
                ("vectors", "vectors", "d"),
                ("MiB", "MiB", ".0f"),
                ("p50_ms", "p50 ms", ".1f"),
                ("p95_ms", "p95 ms", ".1f"),
            ],
            title="exact dense search (random unit vectors), top 20",
        )

    targets = {}
    for set_name in questions_by_set:
        hybrid = next(r for r in recall_rows if r["retriever"] == DEFAULT_HYBRID)
        targets[f"{set_name} hybrid R@5"] = hybrid[f"{set_name} R@5"]
        gold_f1 = next(r["f1"] for r in e2e_rows if r["set"] == set_name and r["setting"] == "gold passage")
        e2e_f1 = next(
            (r["f1"] for r in e2e_rows if r["set"] == set_name and r["setting"].endswith("top 5 passages")), None
        )
        targets[f"{set_name} F1 gap (gold - top 5)"] = None if e2e_f1 is None else gold_f1 - e2e_f1
    print("targets: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in targets.items()))
    write_json(
        args.out,
        machine=machine,
        settings=settings,
        corpus=report.to_dict() | {"passages": len(passages)},
        questions={k: len(v) for k, v in questions_by_set.items()},
        build_seconds=build,
        recall=recall_rows,
        end_to_end=e2e_rows,
        scaling=scale_rows,
        dense_search=dense_rows,
        targets=targets,
    )
    return 0


def _pair(stats: dict) -> tuple[float, float]:
    return stats["p50_ms"], stats["p95_ms"]


if __name__ == "__main__":
    sys.exit(main())
