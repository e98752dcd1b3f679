"""Benchmark growing an index: a full build vs an update that changes 1 % of the documents.

The corpus is every distinct context of the SQuAD-format files in `--data-dir` (one document each;
the shared data gives about 1,500 documents, 1,800 passages). `--changed` of the documents (default
1 %) get a sentence appended; the update re-analyses (and re-embeds) only their passages, reuses the
stored terms and embeddings of the rest, and rebuilds the BM25 matrix from the stored terms of every
passage: the "fixed part", whose cost grows with the index and not with the change.

Rows (each the median of `--repeat` runs, seconds):
- full build:   `Retriever.build` + `save` of the changed corpus (what `kqa index` does after reading it)
- update:       `Retriever.load` + `update` + `save` (what `kqa index --update` does after reading it)
- fixed part:   of the update, the BM25 rebuild + load + save (everything but analysing the changed passages)
and the check that the update's index equals the fresh build (passages, terms, BM25 scores, embeddings).

    python benchmarks/bench_index_update.py                                   # BM25 (Kiwi morphemes) only
    python benchmarks/bench_index_update.py --embedding-model models/e5-small  # hybrid, e5 embeddings too
    python benchmarks/bench_index_update.py --analyzer bigrams --max-documents 100 --out r.json  # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kqa, not an installed one
from common import (  # noqa: E402
    default_data_dir,
    machine_info,
    print_header,
    print_table,
    settings_from_args,
    squad_files,
    write_json,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--analyzer", default="morphemes", choices=["morphemes", "bigrams"])
    p.add_argument("--embedding-model", help="also embed (hybrid index), e.g. models/e5-small; default BM25 only")
    p.add_argument("--changed", type=float, default=0.01, help="fraction of the documents changed")
    p.add_argument("--max-documents", type=int, help="only the first N documents (a smoke run)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


def changed_corpus(documents, fraction: float):
    from kqa.retrieval import Document

    step = max(1, round(1 / fraction))
    changed = set(range(0, len(documents), step))
    return [
        Document(d.id, d.title, d.text + "\n\n이 문단은 갱신되었다.", d.source, d.metadata) if i in changed else d
        for i, d in enumerate(documents)
    ], len(changed)


def main(argv=None) -> int:
    from kqa.retrieval import Embedder, Retriever, RetrieverSettings, load_corpus

    args = parse_args(argv)
    machine = machine_info()
    print_header(machine, settings_from_args(args))
    print("command: " + " ".join(["python", *sys.argv]))
    files = squad_files(args.data_dir)
    documents, report = load_corpus(files)
    documents = documents[: args.max_documents]
    new_documents, n_changed = changed_corpus(documents, args.changed)
    embedder = Embedder.from_pretrained(args.embedding_model, device="cpu") if args.embedding_model else None
    settings = RetrieverSettings(method="hybrid" if embedder else "sparse", analyzer=args.analyzer)
    runs = {"full build": [], "update": [], "fixed part": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            index = Path(tmp) / f"index{r}"
            Retriever.build(documents, settings, embedder=embedder).save(index)  # the index before the change
            t = time.perf_counter()
            fresh = Retriever.build(new_documents, settings, embedder=embedder)
            fresh.save(Path(tmp) / f"fresh{r}")
            runs["full build"].append(time.perf_counter() - t)
            t = time.perf_counter()
            retriever = Retriever.load(index, embedder=embedder)
            loaded = time.perf_counter() - t
            update = retriever.update(new_documents)
            t2 = time.perf_counter()
            retriever.save(index)
            saved = time.perf_counter() - t2
            runs["update"].append(time.perf_counter() - t)
            runs["fixed part"].append(loaded + update.seconds.get("bm25", 0.0) + saved)
        check_equal(retriever, fresh)
    full = statistics.median(runs["full build"])
    rows = [
        {"step": name, "seconds": statistics.median(times), "of full build": statistics.median(times) / full}
        for name, times in runs.items()
    ]
    title = (
        f"{len(new_documents)} documents, {len(fresh.passages)} passages, {n_changed} changed "
        f"({update.passages_analysed} passages analysed, {update.passages_reused} reused); method "
        f"{settings.method}, analyzer {args.analyzer}; median of {args.repeat}"
    )
    print_table(rows, [("step", "step", ""), ("seconds", "seconds", ".3f"), ("of full build", "ratio", ".3f")], title)
    print("update's index equals the fresh build: passages, terms, BM25 scores" + (", embeddings" if embedder else ""))
    write_json(
        args.out, machine=machine, settings=settings_from_args(args), rows=rows, update=update.to_dict(), runs=runs
    )
    return 0


def check_equal(updated, fresh) -> None:
    """The reference: the update must give the index a fresh build gives (else the timing means nothing)."""
    assert updated.passages == fresh.passages, "passages differ from the fresh build"
    assert updated.passage_terms == fresh.passage_terms, "terms differ from the fresh build"
    for passage in fresh.passages[:: max(1, len(fresh.passages) // 20)]:
        terms = fresh.passage_terms[passage.index][:5] or ["없음"]
        np.testing.assert_allclose(updated.sparse.scores(terms), fresh.sparse.scores(terms), rtol=1e-6, atol=1e-6)
    if fresh.dense is not None:
        np.testing.assert_allclose(updated.dense.embeddings, fresh.dense.embeddings, atol=1e-4)


if __name__ == "__main__":
    sys.exit(main())
