"""Growing an index: bring a `Retriever` to a new set of documents, analysing and embedding only the
passages of documents whose text is new or changed (`Retriever.update`, `Retriever.delete`).

A document is known by its id (a path, or a JSONL record's id). One whose text is unchanged keeps its
passages, their stored analysed terms and their embeddings; one whose title or metadata changed is
counted as changed but is not re-analysed (neither terms nor embeddings depend on them). The BM25
matrix is rebuilt from the stored terms of every passage: that is the part of an update whose cost
grows with the whole index, not with the change (docs/benchmarks.md measures it). The result equals a
fresh `Retriever.build` of the same documents: same passages in the same order, same BM25 scores, and
the same embeddings up to float rounding of the batches they were computed in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from kqa.retrieval.corpus import Document, Passage, passage_of, split_passages
from kqa.retrieval.sparse import BM25Index

# Metadata that does not make a document "changed": a file touched but not edited is the same document.
VOLATILE_METADATA = ("mtime",)


def document_hash(document: Document) -> str:
    """sha256 of what makes a document what it is: its text, title and metadata (but `mtime`)."""
    content = {
        "text": document.text,
        "title": document.title,
        "metadata": {k: v for k, v in document.metadata.items() if k not in VOLATILE_METADATA},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class UpdateReport:
    added: list[str] = field(default_factory=list)  # document ids
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    passages_analysed: int = 0  # split, analysed and embedded now
    passages_reused: int = 0  # kept with their stored terms and embeddings
    seconds: dict = field(default_factory=dict)  # split / analyze / embed / bm25 (the rebuild)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
            f"{self.unchanged} unchanged documents; {self.passages_analysed} passages analysed, "
            f"{self.passages_reused} reused"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("added", "changed", "removed"):
            out[key] = len(out[key])
        return out


def update_retriever(retriever, documents: Sequence[Document], *, show_progress: bool = False) -> UpdateReport:
    # `retriever`: a kqa.retrieval.Retriever, not imported here because the retriever imports this module.
    """Make `retriever` index exactly `documents`, in their order (see the module's docstring)."""
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate document id {duplicate!r} in the update")
    if not documents:
        raise ValueError("an update must leave at least one document in the index (build a new one instead)")
    report, seconds = UpdateReport(), {}
    old_docs = {d.id: d for d in retriever.documents}
    old_passages: dict[str, list[int]] = {}
    for p in retriever.passages:
        old_passages.setdefault(p.doc_id, []).append(p.index)
    # Each passage of the result: (document, start, end, row), row < 0 = -1 - position in `fresh`.
    layout: list[tuple[Document, int, int, int]] = []
    fresh: list[Passage] = []
    t = time.perf_counter()
    for doc in documents:
        old = old_docs.get(doc.id)
        if old is not None and old.text == doc.text:
            if document_hash(old) == document_hash(doc):
                report.unchanged += 1
            else:
                report.changed.append(doc.id)
            layout += [(doc, retriever.passages[i].start, retriever.passages[i].end, i) for i in old_passages[doc.id]]
            continue
        (report.added if old is None else report.changed).append(doc.id)
        for p in split_passages(doc, retriever.info.passage_settings):
            layout.append((doc, p.start, p.end, -1 - len(fresh)))
            fresh.append(p)
    kept = set(ids)
    report.removed = [i for i in old_docs if i not in kept]
    seconds["split"] = time.perf_counter() - t
    if not layout:
        raise ValueError(f"the {len(documents)} documents hold no text to index (every one is blank)")
    report.passages_analysed = len(fresh)
    report.passages_reused = len(layout) - len(fresh)
    rows = np.array([row if row >= 0 else len(retriever.passages) - 1 - row for *_, row in layout], dtype=np.int64)

    # passage_of: with the passage's location in its file ("page 3"), from the document's regions
    passages = [passage_of(doc, i, s, e) for i, (doc, s, e, _) in enumerate(layout)]
    if retriever.sparse is not None:
        stored = retriever.passage_terms
        if stored is None:  # an index of format 1 kept no terms: analyse its passages once, now
            stored = retriever.analyzer.analyze_many([p.text for p in retriever.passages], show_progress=show_progress)
        t = time.perf_counter()
        new_terms = (
            retriever.analyzer.analyze_many([p.text for p in fresh], show_progress=show_progress) if fresh else []
        )
        seconds["analyze"] = time.perf_counter() - t
        every = [*stored, *new_terms]
        terms = [every[r] for r in rows.tolist()]
        t = time.perf_counter()
        retriever.sparse = BM25Index.build(terms, show_progress=show_progress)
        retriever.passage_terms = terms
        seconds["bm25"] = time.perf_counter() - t
    if retriever.dense is not None:
        from kqa.retrieval.dense import DenseIndex

        t = time.perf_counter()
        stacked = retriever.dense.embeddings
        if fresh:
            new_embeddings = retriever.embedder.embed_passages([p.text for p in fresh], show_progress=show_progress)
            stacked = np.concatenate([stacked, new_embeddings])
        seconds["embed"] = time.perf_counter() - t
        # The index's own ANN settings (graph parameters built or loaded with), and its graph rebuilt
        # when they want one: HNSW has no cheap delete, and passages were reordered.
        dense = DenseIndex(stacked[rows], ann=retriever.dense.ann)
        t = time.perf_counter()
        if dense.build_graph():
            seconds["ann"] = time.perf_counter() - t
        retriever.dense = dense
    retriever.documents = list(documents)
    retriever.passages = passages
    retriever.reindex()
    report.seconds = {k: round(v, 3) for k, v in seconds.items()}
    return report
