"""Same answers from the Milvus backend as from the default index: recall@1/5/20 of the gold passage, and
how many questions get the identical top-20 ranking, for sparse / dense / hybrid, on the contexts of the
shared dev files (korquad-1.0-sample dev, tydiqa-goldp-ko dev) as documents and their questions.

Both are built in this run from the same documents, the same Kiwi analyzer and the same embedder
(`--embedding-model`, models/e5-small by default); the Milvus side is an embedded Milvus Lite file.

    python benchmarks/bench_engine_parity.py --methods sparse,dense,hybrid --out parity.json
    python benchmarks/bench_engine_parity.py --methods sparse --max-questions 200     # no embedder needed
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retrieval import RECALL_AT, dataset_name, load_questions, recall_table  # noqa: E402
from common import default_data_dir, machine_info, print_header, print_table, settings_from_args, write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--embedding-model", default="models/e5-small")
    parser.add_argument("--methods", default="sparse,dense,hybrid")
    parser.add_argument("--max-questions", type=int, default=None, help="per dev file (all by default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from kqa.retrieval import Embedder, Retriever, RetrieverSettings, load_corpus
    from kqa.retrieval.milvus_store import MilvusStore

    methods = args.methods.split(",")
    settings = settings_from_args(args)
    machine = machine_info()
    print_header(machine, settings)
    dev_files = sorted(f for f in args.data_dir.rglob("*.json") if "dev" in f.name.lower())
    documents, report = load_corpus(dev_files)
    doc_id_of_context = {}
    for d in documents:
        doc_id_of_context.setdefault(d.text, d.id)
    questions_by_set = {
        dataset_name(f): [q for q in load_questions(f, doc_id_of_context, None) if q["doc_id"]][: args.max_questions]
        for f in dev_files
    }
    print(f"corpus: {report.summary()}; questions: " + ", ".join(f"{k} {len(v)}" for k, v in questions_by_set.items()))

    dense = any(m != "sparse" for m in methods)
    retriever_settings = RetrieverSettings(method="hybrid" if dense else "sparse")
    embedder = Embedder.from_pretrained(args.embedding_model) if dense else None
    seconds = {}
    t = time.perf_counter()
    retriever = Retriever.build(documents, retriever_settings, embedder=embedder)
    seconds["default index build"] = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_parity_") as tmp:
        store = MilvusStore.build(
            documents, retriever_settings, uri=f"{tmp}/kqa.db", embedder=embedder, analyzer=retriever.analyzer
        )
        seconds["milvus lite build"] = time.perf_counter() - t
        engines = {}
        for m in methods:
            engines[f"kqa {m}"] = (retriever, m)
            engines[f"milvus {m}"] = (store, m)
        depth = max(RECALL_AT)
        t = time.perf_counter()
        rows, first_hits = recall_table(engines, questions_by_set, depth)
        seconds["all retrievals"] = time.perf_counter() - t
        agreement = []
        for m in methods:
            for set_name, questions in questions_by_set.items():
                texts = [q["question"] for q in questions]
                a = retriever.retrieve_many(texts, depth, method=m)
                b = store.retrieve_many(texts, depth, method=m)
                same = sum([h.passage.id for h in x] == [h.passage.id for h in y] for x, y in zip(a, b))
                agreement.append({"method": m, "set": set_name, "identical top-20": same, "questions": len(texts)})
        store.close()
    columns = [("retriever", "retriever", "s")] + [(k, k, ".4f") for k in rows[0] if k != "retriever"]
    print_table(rows, columns, title="recall of the gold passage")
    print_table(
        agreement,
        [
            ("method", "method", "s"),
            ("set", "set", "s"),
            ("identical top-20", "identical top-20", "d"),
            ("questions", "questions", "d"),
        ],
        title="rankings identical to the default index",
    )
    print("seconds (a shared machine: indicative only): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    write_json(args.out, machine=machine, settings=settings, recall=rows, agreement=agreement, seconds=seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
