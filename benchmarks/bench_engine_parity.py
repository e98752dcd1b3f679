"""Same answers from the Milvus backend as from the default index: recall@1/5/20 of the gold passage, and
how many questions get the identical top-20 ranking, for sparse / dense / hybrid, on the contexts of the
shared dev files (korquad-1.0-sample dev, tydiqa-goldp-ko dev) as documents and their questions.

Both are built in this run from the same documents, the same Kiwi analyzer and the same embedder
(`--embedding-model`, models/e5-small by default); the Milvus side is an embedded Milvus Lite file.
With `--reader DIR` (a kqa model, e.g. the main job's outputs/offline-e5-small/best) both also answer end
to end (`RetrieveAndRead`, `--read-passages` passages, each method): official EM / F1 of each, and how many
questions get the identical answer text from both.

    python benchmarks/bench_engine_parity.py --methods sparse,dense,hybrid --out parity.json
    python benchmarks/bench_engine_parity.py --methods sparse --max-questions 200     # no embedder needed
    python benchmarks/bench_engine_parity.py --reader outputs/offline-e5-small/best --out parity.json
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
    parser.add_argument("--reader", type=Path, default=None, help="a kqa model: also compare answers end to end")
    parser.add_argument("--read-passages", type=int, default=5, help="passages read per question (end to end)")
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
        answers = []
        if args.reader is not None:
            t = time.perf_counter()
            answers = end_to_end(retriever, store, args.reader, methods, questions_by_set, args.read_passages)
            seconds["end to end (both)"] = time.perf_counter() - t
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
    if answers:
        print_table(
            answers,
            [("method", "method", "s"), ("set", "set", "s"), ("kqa_em", "default EM", ".2f"),
             ("kqa_f1", "default F1", ".2f"), ("milvus_em", "Milvus EM", ".2f"), ("milvus_f1", "Milvus F1", ".2f"),
             ("identical", "identical answers", "d"), ("questions", "questions", "d")],
            title=f"end to end: RetrieveAndRead over {args.read_passages} passages, {args.reader}",
        )  # fmt: skip
    print("seconds (a shared machine: indicative only): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    write_json(
        args.out,
        machine=machine,
        settings=settings,
        recall=rows,
        agreement=agreement,
        end_to_end=answers,
        seconds=seconds,
    )
    return 0


def end_to_end(retriever, store, reader_dir, methods, questions_by_set, read_passages) -> list[dict]:
    """Each method's answers through `RetrieveAndRead` over the default index and over Milvus: official
    EM / F1 of each and the number of questions answered with the identical text."""
    from kqa.inference import QuestionAnswerer
    from kqa.metric import score_predictions
    from kqa.retrieval import RetrieveAndRead

    reader = QuestionAnswerer.from_pretrained(reader_dir, device="cpu")
    rows = []
    for m in methods:
        for set_name, questions in questions_by_set.items():
            texts = [q["question"] for q in questions]
            row = {"method": m, "set": set_name, "questions": len(texts)}
            predicted = {}
            for name, index in (("kqa", retriever), ("milvus", store)):
                results = RetrieveAndRead(index, reader, passages=read_passages).ask_many(texts, method=m)
                predicted[name] = {
                    q["id"]: (r.answers[0].text if r.answers else "") for q, r in zip(questions, results)
                }
                scores = score_predictions(questions, predicted[name])
                row[f"{name}_em"], row[f"{name}_f1"] = scores.exact_match, scores.f1
            row["identical"] = sum(predicted["kqa"][i] == predicted["milvus"][i] for i in predicted["kqa"])
            rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
