"""`MilvusStore`: the passages, BM25 weights and embeddings of a corpus in Milvus, ranked as `Retriever` ranks.

    store = MilvusStore.build(documents, uri="./kqa.db", embedder=embedder)    # Milvus Lite: a local file
    store = MilvusStore.build(documents, uri="http://host:19530", ...)         # Standalone / Distributed
    store.save("my_index")                  # index.json: backend, uri, collection, analyzer / embedder identity
    store = open_index("my_index")          # kqa ask / kqa serve --index my_index open it with no other change
    store.update(documents)                 # index exactly these: only new / changed ones re-analysed
    store.upsert(documents); store.delete(["old.txt"])

The same passages (`split_corpus`), Kiwi terms (`MorphemeAnalyzer`) and e5 embeddings as the default index,
so the same rankings (docs/retrieval.md has the parity table):

- BM25 is computed here, with bm25s's formula and parameters (Lucene variant, k1=1.5, b=0.75), not by
  Milvus's BM25 function: Milvus's analyzers have no Korean morphology, Milvus Lite's tokenizers are only
  `standard` (\\w+) and `jieba` (no whitespace tokenizer to feed it Kiwi's terms), and Lite keeps BM25
  statistics per segment, so its scores drift from a global BM25 once data lands in several segments. A
  passage's sparse vector holds each term's length-normalised frequency tf / (tf + k1 (1 - b + b dl/avgdl));
  the query vector holds each term's idf (from document frequencies kept in the `_terms` collection) times
  its count in the query, so the inner product is bm25s's score.
- Dense: inner product of unit e5 vectors (cosine): a FLAT (exact) index, or Milvus's HNSW index with the
  default index's graph parameters (kqa.retrieval.ann: M, efConstruction, efSearch) where the settings'
  `ann` wants a graph for the corpus built (`auto`: from `ann_threshold` passages, as `DenseIndex`). The
  kind is chosen when the collection is created; an update keeps it.
- Hybrid: each side's best `candidates` passages from Milvus, fused here with kqa's own `score_fusion` /
  `reciprocal_rank_fusion` (Milvus's rankers normalise differently).
- Filters (`kqa.retrieval.filters`) run inside Milvus: `=` / `!=` as `array_contains_any` over each
  passage's canonical (key, value) forms, ordered comparisons on a JSON field of numbers (ISO dates already
  turned into epoch seconds); globs are checked here on over-fetched hits.

Each document row keeps its `document_hash` (what `update` compares) and its regions (PDF pages, HTML
and DOCX elements); each passage row its `location`. Collections built before these fields existed still
open: `update` then hashes the documents read back, and passages have no location.

Updates: `update` / `upsert` / `delete` keep the statistics exact — when the average passage length changes, every
passage's BM25 weights are rewritten (one pass over the collection), so results equal a fresh build.
One writer at a time: the statistics are read, changed and written back without a lock.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kqa.retrieval.corpus import CorpusReport, Document, Passage, PassageSettings, split_corpus
from kqa.retrieval.dense import Embedder
from kqa.retrieval.filters import Condition, MetadataFilter, _as_number, parse_filters
from kqa.retrieval.fusion import reciprocal_rank_fusion, score_fusion
from kqa.retrieval.retriever import (
    IndexMismatchError,
    RetrievedPassage,
    RetrieverSettings,
    check_retrieval_call,
)
from kqa.retrieval.sparse import make_analyzer
from kqa.retrieval.update import UpdateReport, document_hash

MANIFEST_FORMAT = "kqa-milvus-index"
MANIFEST_VERSION = 1
DEFAULT_COLLECTION = "kqa"
TOKEN_ENV = "MILVUS_TOKEN"  # the token of a secured cluster comes from here, never from a file
BM25_K1, BM25_B = 1.5, 0.75  # bm25s's defaults, which BM25Index uses
MAX_VARCHAR = 65535  # Milvus's VARCHAR limit, in UTF-8 bytes
DOCUMENT_CHUNK_CHARS = 16000  # 4 bytes a character at most: a chunk always fits a VARCHAR
MAX_TOPK = 16384  # Milvus's largest limit of one search
GLOB_OVERFETCH = 4  # hits fetched per hit wanted when a glob is checked here
_PLACEHOLDER_DIM = 2  # Milvus needs a vector field in every collection; the side collections hold none
_STATS_KEY = " stats"  # the _terms row of the corpus statistics; a space: never an analyzer term
_BATCH = 512


def _client_class():
    from kqa.extras import require

    require("milvus", "pymilvus")
    from pymilvus import MilvusClient

    return MilvusClient


def is_local_uri(uri: str) -> bool:
    """A Milvus Lite file (opened in-process) rather than a server URL."""
    return "://" not in uri


def connect(uri: str):
    """A `MilvusClient`; a local path needs milvus-lite, a URL a running server (token: $MILVUS_TOKEN)."""
    client_class = _client_class()
    if is_local_uri(uri):
        from kqa.extras import require

        require("milvus", "milvus_lite")
        if not str(uri).endswith(".db"):  # pymilvus opens a path as Milvus Lite only by this suffix
            raise ValueError(f"a Milvus Lite file must end in .db, got {uri!r} (a server: http://host:19530)")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        return client_class(uri=str(uri))
    return client_class(uri=uri, token=os.environ.get(TOKEN_ENV, ""))


def _literal(value: str) -> str:
    """A Milvus expression string literal (double-quoted, backslash escapes)."""
    return json.dumps(value, ensure_ascii=False)


def _literals(values: Sequence[str]) -> str:
    return "[" + ", ".join(_literal(v) for v in values) + "]"


# ---- metadata → filterable fields ---------------------------------------------------------------


def _value_forms(value: object) -> list[str]:
    """Canonical forms of one metadata value for `=`: two values are equal under `Condition.matches`
    exactly when they share a form (numbers as floats, booleans lower-cased, anything else as text)."""
    if isinstance(value, list):
        return [form for v in value for form in _value_forms(v)]
    if isinstance(value, bool):
        return [f"b:{str(value).lower()}"]
    if isinstance(value, (int, float)):
        number = float(value) + 0.0  # -0.0 == 0.0
        return [] if math.isnan(number) else [f"n:{number!r}"]
    return [f"s:{value}"]


def _condition_forms(condition: Condition) -> list[str]:
    """The forms a document value may have for `KEY=VALUE` to hold (`Condition._equal`, not a glob)."""
    text = str(condition.value)
    forms = [f"s:{text}", f"b:{text.lower()}"]
    number = _as_number(text)
    if number is not None and not math.isnan(number):
        forms.append(f"n:{number + 0.0!r}")
    return [f"{condition.key}={f}" for f in forms]


def _filter_fields(metadata: dict, where: str) -> dict:
    """`eqs`: "key=form" of every value; `num`: every value that compares as a number (ISO dates too)."""
    eqs, num = [], {}
    for key, value in metadata.items():
        eqs.extend(f"{key}={form}" for form in _value_forms(value))
        number = _as_number(value)
        if number is not None and math.isfinite(number):
            num[key] = number
    too_long = [e for e in eqs if len(e.encode()) > 2048]
    if too_long or len(eqs) > 1024:
        raise ValueError(f"{where}: metadata too large for the Milvus index (over 1024 values or a value over 2 KiB)")
    return {"meta": metadata, "eqs": eqs, "num": num}


def filter_expression(metadata_filter: MetadataFilter) -> tuple[str, bool]:
    """The Milvus expression of a filter, and whether hits must still be checked here (globs)."""
    parts, check_here = [], False
    for c in metadata_filter.conditions:
        if c.is_glob:
            check_here = True  # fnmatch on list members and scalars alike: checked on the hits
        elif c.op in ("=", "!="):
            contains = f"array_contains_any(eqs, {_literals(_condition_forms(c))})"
            parts.append(contains if c.op == "=" else f"not {contains}")
        else:
            parts.append(f"num[{_literal(c.key)}] {c.op} {float(c.value)!r}")
    return " and ".join(f"({p})" for p in parts), check_here


# ---- BM25 -----------------------------------------------------------------------------------------


def bm25_idf(df: int, n: int) -> float:
    """bm25s's Lucene idf."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def bm25_tf_weights(term_ids: Sequence[int], avgdl: float) -> dict[int, float]:
    """bm25s's Lucene term-frequency component of every term of a passage (its length: all its terms)."""
    length = len(term_ids)
    norm = BM25_K1 * ((1 - BM25_B) + BM25_B * length / avgdl) if avgdl > 0 else BM25_K1
    return {t: tf / (norm + tf) for t, tf in Counter(term_ids).items()}


class _View(Sequence):
    """`store.documents` / `store.passages`: len() counts in Milvus, iteration pages through it."""

    def __init__(self, count, rows):
        self._count, self._rows = count, rows

    def __len__(self) -> int:
        return self._count()

    def __iter__(self):
        return self._rows()

    def __getitem__(self, i):
        raise TypeError("a Milvus-backed view is iterated, not indexed")


class MilvusStore:
    """What `RetrieveAndRead`, `kqa ask` and `kqa serve` use of a `Retriever`: `retrieve_many`, `retrieve`,
    `document`, `documents`, `passages`, `settings`, `embedder`, `dense` — over Milvus collections
    `<collection>` (passages), `<collection>_documents` and `<collection>_terms` (BM25 vocabulary)."""

    def __init__(
        self,
        client,
        uri: str,
        collection: str,
        settings: RetrieverSettings,
        *,
        embedder: Embedder | None = None,
        passage_settings: PassageSettings = PassageSettings(),  # noqa: B008 - frozen
        corpus_report: dict | None = None,
        build_seconds: dict | None = None,
        analyzer=None,
    ):
        if settings.uses_dense and embedder is None:
            raise ValueError(f"method {settings.method!r} needs an embedder")
        self.client, self.uri, self.collection = client, uri, collection
        self.settings = settings
        if analyzer is not None and analyzer.name != settings.analyzer:
            raise ValueError(f"the settings name the {settings.analyzer!r} analyzer, not {analyzer.name!r}")
        self.analyzer = (analyzer or make_analyzer(settings.analyzer)) if settings.analyzer else None
        self.embedder = embedder if settings.uses_dense else None
        self.dense = True if self.embedder is not None else None  # "has embeddings", as Retriever.dense
        self.sparse = True if self.analyzer is not None else None
        self.passage_settings = passage_settings
        self.corpus_report = corpus_report or {}
        self.build_seconds = build_seconds or {}
        self.documents = _View(self._count_documents, self._iter_documents)
        self.passages = _View(self._count_passages, self._iter_passages)
        self._fields: dict[str, set[str]] = {}  # each collection's fields, read once (older builds have fewer)
        self._dense_kind: str | None = None  # read from Milvus on first use

    def _has_field(self, collection: str, name: str) -> bool:
        if collection not in self._fields:
            self._fields[collection] = {f["name"] for f in self.client.describe_collection(collection)["fields"]}
        return name in self._fields[collection]

    @property
    def _passage_fields(self) -> list[str]:
        return [*_PASSAGE_FIELDS, *(["location"] if self._has_field(self.collection, "location") else [])]

    @property
    def _docs(self) -> str:
        return f"{self.collection}_documents"

    @property
    def _terms(self) -> str:
        return f"{self.collection}_terms"

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        documents: Sequence[Document],
        settings: RetrieverSettings = RetrieverSettings(),  # noqa: B008 - frozen
        *,
        uri: str,
        collection: str = DEFAULT_COLLECTION,
        embedder: Embedder | None = None,
        passage_settings: PassageSettings = PassageSettings(),  # noqa: B008 - frozen
        corpus_report: CorpusReport | None = None,
        show_progress: bool = False,
        analyzer=None,
    ) -> MilvusStore:
        """(Re)create the collections and index `documents` into them (an existing collection of that
        name is dropped)."""
        if not documents:
            raise ValueError("no documents to index")
        if settings.uses_dense and embedder is None:
            raise ValueError(f"method {settings.method!r} needs an embedder; or use method='sparse'")
        t = time.perf_counter()
        client = connect(uri)
        store = cls(
            client,
            uri,
            collection,
            settings,
            embedder=embedder,
            passage_settings=passage_settings,
            corpus_report=corpus_report.to_dict() if corpus_report else {},
            analyzer=analyzer,
        )
        passages = split_corpus(documents, passage_settings)
        store._create_collections(num_passages=len(passages))
        store._upsert(documents, passages, show_progress=show_progress)
        store.build_seconds = {"total": round(time.perf_counter() - t, 3)}
        return store

    def _create_collections(self, num_passages: int) -> None:
        from pymilvus import DataType

        for name in (self.collection, self._docs, self._terms):
            if self.client.has_collection(name):
                self.client.drop_collection(name)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pid", DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("title", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("start", DataType.INT64)
        schema.add_field("end", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("location", DataType.VARCHAR, max_length=MAX_VARCHAR)  # "page 3"; "" when none
        schema.add_field("terms", DataType.VARCHAR, max_length=MAX_VARCHAR)  # the analyzer's terms, a JSON list
        schema.add_field("meta", DataType.JSON)
        schema.add_field("num", DataType.JSON)
        schema.add_field("eqs", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=1024, max_length=2048)
        index = self.client.prepare_index_params()
        if self.analyzer is not None:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        if self.embedder is not None:
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.embedder.dimension)
            ann = self.settings.ann_settings()
            if ann.wants_graph(num_passages):
                params = {"M": ann.m, "efConstruction": ann.ef_construction}
                index.add_index("dense", index_type="HNSW", metric_type="IP", params=params)
            else:
                index.add_index("dense", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=index)

        docs = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        docs.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
        docs.add_field("doc_id", DataType.VARCHAR, max_length=MAX_VARCHAR)
        docs.add_field("seq", DataType.INT64)  # order of indexing, as Retriever.documents
        docs.add_field("chunk", DataType.INT64)
        docs.add_field("title", DataType.VARCHAR, max_length=MAX_VARCHAR)
        docs.add_field("source", DataType.VARCHAR, max_length=MAX_VARCHAR)
        docs.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        docs.add_field("meta", DataType.JSON)
        docs.add_field("sha256", DataType.VARCHAR, max_length=64)  # document_hash, on chunk 0
        # The regions as a JSON list [[start, end, label], ...], cut into chunks as the text is (a long
        # PDF's can outgrow one field); "" for plain text.
        docs.add_field("regions", DataType.VARCHAR, max_length=MAX_VARCHAR)
        self._create_side(docs, self._docs)

        terms = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        terms.add_field("term", DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
        terms.add_field("tid", DataType.INT64)
        terms.add_field("df", DataType.INT64)
        terms.add_field("info", DataType.JSON)  # the statistics row only: passages, total length, avgdl
        self._create_side(terms, self._terms)
        self._fields.clear()
        self._write_stats(
            {"passages": 0, "total_length": 0, "avgdl": 0.0, "next_tid": 0, "next_seq": 0, "next_doc_seq": 0}
        )

    def _create_side(self, schema, name: str) -> None:
        from pymilvus import DataType

        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=_PLACEHOLDER_DIM)
        index = self.client.prepare_index_params()
        index.add_index("placeholder", index_type="FLAT", metric_type="L2")
        self.client.create_collection(name, schema=schema, index_params=index)

    # -- statistics -----------------------------------------------------------------------------

    def _stats(self) -> dict:
        # A primary-key get, not a filter query: a filter scans the collection (~100 ms at 25,000 terms).
        rows = self.client.get(self._terms, ids=[_STATS_KEY], output_fields=["info"])
        if not rows:
            raise ValueError(f"{self.uri}: collection {self._terms!r} has no statistics row; rebuild the index")
        return rows[0]["info"]

    def _write_stats(self, stats: dict) -> None:
        row = {"term": _STATS_KEY, "tid": -1, "df": 0, "info": stats, "placeholder": [0.0] * _PLACEHOLDER_DIM}
        self.client.upsert(self._terms, [row])

    def _term_rows(self, terms: Sequence[str]) -> dict[str, dict]:
        out = {}
        terms = sorted(set(terms))
        for i in range(0, len(terms), _BATCH):
            rows = self.client.get(self._terms, ids=terms[i : i + _BATCH], output_fields=["term", "tid", "df"])
            out.update({r["term"]: r for r in rows})
        return out

    # -- updates --------------------------------------------------------------------------------

    def upsert(self, documents: Sequence[Document], *, show_progress: bool = False) -> dict:
        """Add documents, replacing those whose id is already indexed (their passages and all). Returns
        counts: documents, passages added, passages removed."""
        ids = [d.id for d in documents]
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"duplicate document ids in one upsert: {sorted(i for i, n in Counter(ids).items() if n > 1)}"
            )
        return self._upsert(documents, split_corpus(documents, self.passage_settings), show_progress=show_progress)

    def _upsert(self, documents: Sequence[Document], passages: list[Passage], *, show_progress: bool) -> dict:
        """`upsert` with the documents already split (`build` splits them once, to size the dense index)."""
        ids = [d.id for d in documents]
        removed = self._remove(ids)
        stats = self._stats()
        by_id = {d.id: d for d in documents}
        terms = []
        if self.analyzer is not None and passages:
            terms = self.analyzer.analyze_many([p.text for p in passages], show_progress=show_progress)
        vectors = None
        if self.embedder is not None and passages:
            vectors = self.embedder.embed_passages([p.text for p in passages], show_progress=show_progress)
        tids = self._count_terms(terms, stats, +1)
        stats["passages"] += len(passages)
        stats["total_length"] += sum(len(t) for t in terms)
        avgdl = self._settle_avgdl(stats)
        with_location = self._has_field(self.collection, "location")
        encoded_terms = [json.dumps(t, ensure_ascii=False) for t in terms] if terms else None
        for p, t in zip(passages, encoded_terms or [""] * len(passages)):  # all checked before any is written
            _check_varchars(
                f"document {p.doc_id!r}", pid=p.id, title=p.title, text=p.text, terms=t, location=p.location
            )

        def rows() -> Iterator[dict]:  # made a batch at a time: a million rows of Python floats would not fit
            for i, p in enumerate(passages):
                row = {
                    "pid": p.id,
                    "seq": stats["next_seq"] + i,
                    "doc_id": p.doc_id,
                    "title": p.title,
                    "start": p.start,
                    "end": p.end,
                    "text": p.text,
                    **({"location": p.location or ""} if with_location else {}),
                    "terms": encoded_terms[i] if encoded_terms else "[]",
                    **_filter_fields(by_id[p.doc_id].metadata, f"document {p.doc_id!r}"),
                }
                if self.analyzer is not None:
                    row["sparse"] = bm25_tf_weights([tids[t] for t in terms[i]], avgdl)
                if vectors is not None:
                    row["dense"] = vectors[i].tolist()
                yield row

        self._insert_batches(self.collection, rows(), total=len(passages), show_progress=show_progress)
        stats["next_seq"] += len(passages)
        self._insert_documents(documents, stats)
        self._write_stats(stats)
        self._flush()
        return {"documents": len(documents), "passages_added": len(passages), "passages_removed": removed}

    def update(self, documents: Sequence[Document], *, show_progress: bool = False) -> UpdateReport:
        """Index exactly `documents` from now on, as `Retriever.update`: a document is new, changed or
        unchanged by its `document_hash` (kept in the documents collection); only new documents and those
        whose text changed are split, analysed and embedded; one whose title or metadata alone changed
        keeps its passages, whose title and metadata fields are rewritten; documents not given are
        removed. Documents keep the order they were first indexed in (ties in a ranking follow it)."""
        ids = [d.id for d in documents]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"duplicate document id {duplicate!r} in the update")
        if not documents:
            raise ValueError("an update must leave at least one document in the index (build a new one instead)")
        report, seconds = UpdateReport(), {}
        t = time.perf_counter()
        stored = self._stored_documents()
        hashes = {d.id: document_hash(d) for d in documents}
        differing = [d for d in documents if d.id in stored and stored[d.id]["sha256"] != hashes[d.id]]
        old_texts = self._texts([d.id for d in differing])
        fresh, relabel = [], []
        for doc in documents:
            old = stored.get(doc.id)
            if old is None:
                report.added.append(doc.id)
                fresh.append(doc)
            elif old["sha256"] == hashes[doc.id]:
                report.unchanged += 1
                if old["meta"] != doc.metadata:  # only volatile metadata (a file's mtime) moved: kept current
                    relabel.append(doc)
            else:
                report.changed.append(doc.id)
                (relabel if old_texts.get(doc.id) == doc.text else fresh).append(doc)
        kept = set(ids)
        report.removed = [i for i in stored if i not in kept]
        seconds["compare"] = time.perf_counter() - t
        t = time.perf_counter()
        self._remove(report.removed)
        self._relabel(relabel)
        report.passages_analysed = self.upsert(fresh, show_progress=show_progress)["passages_added"]
        report.passages_reused = len(self.passages) - report.passages_analysed
        self._flush()
        seconds["write"] = time.perf_counter() - t
        report.seconds = {k: round(v, 3) for k, v in seconds.items()}
        return report

    def delete(self, doc_ids: Sequence[str]) -> UpdateReport:
        """Remove documents by id, as `Retriever.delete`: an id the index does not hold is an error
        (nothing is removed), and so is removing every document."""
        ids = list(dict.fromkeys(doc_ids))
        present = {r["doc_id"] for r in self._query_in(self._docs, "doc_id", ids, ["doc_id"])}
        missing = [i for i in ids if i not in present]
        if missing:
            raise ValueError(f"no document with id {', '.join(map(repr, missing[:10]))} in the index")
        if len(present) >= self._count_documents():
            raise ValueError("an update must leave at least one document in the index (build a new one instead)")
        t = time.perf_counter()
        self._remove(ids)
        self._settle_avgdl(stats := self._stats())
        self._write_stats(stats)
        self._flush()
        return UpdateReport(
            removed=ids,
            unchanged=self._count_documents(),
            passages_reused=self._count_passages(),
            seconds={"write": round(time.perf_counter() - t, 3)},
        )

    def _flush(self) -> None:
        """Seal what was written into indexed segments: rows still in memory are searched by brute force
        (Milvus Lite scans them in Python: a BM25 search of 2,000 unflushed passages took ~190 ms, 3 ms
        flushed), and a server persists them."""
        for name in (self.collection, self._docs, self._terms):
            self.client.flush(name)

    def _stored_documents(self) -> dict[str, dict]:
        """doc_id → its `document_hash` and metadata, in indexing order (a collection of an older build
        kept no hash: its documents are read back and hashed)."""
        if not self._has_field(self._docs, "sha256"):
            return {d.id: {"sha256": document_hash(d), "meta": d.metadata} for d in self._iter_documents()}
        return {
            r["doc_id"]: {"sha256": r["sha256"], "meta": r["meta"]}
            for batch in self._pages(self._docs, ["doc_id", "sha256", "meta"], "chunk == 0")
            for r in batch
        }

    def _texts(self, doc_ids: Sequence[str]) -> dict[str, str]:
        rows = sorted(
            self._query_in(self._docs, "doc_id", doc_ids, ["doc_id", "chunk", "text"]), key=lambda r: r["chunk"]
        )
        texts: dict[str, str] = {}
        for r in rows:
            texts[r["doc_id"]] = texts.get(r["doc_id"], "") + r["text"]
        return texts

    def _relabel(self, documents: Sequence[Document]) -> None:
        """Rewrite the title and metadata of documents whose text (so passages, terms, embeddings) stays."""
        with_hash = self._has_field(self._docs, "sha256")
        for doc in documents:
            fields = _filter_fields(doc.metadata, f"document {doc.id!r}")
            pids = self._query_in(self.collection, "doc_id", [doc.id], ["pid"])
            rows = [{"pid": r["pid"], "title": doc.title, **fields} for r in pids]
            for i in range(0, len(rows), _BATCH):
                self.client.upsert(self.collection, rows[i : i + _BATCH], partial_update=True)
            chunks = self._query_in(self._docs, "doc_id", [doc.id], ["key", "chunk"])
            first = [
                {"key": r["key"], "title": doc.title, "meta": doc.metadata}
                | ({"sha256": document_hash(doc)} if with_hash else {})
                for r in chunks
                if r["chunk"] == 0
            ]
            rest = [{"key": r["key"], "title": doc.title} for r in chunks if r["chunk"] != 0]
            for rows in (first, rest):
                if rows:
                    self.client.upsert(self._docs, rows, partial_update=True)

    def _remove(self, doc_ids: Sequence[str]) -> int:
        """Delete the passages and documents of `doc_ids`, taking their terms out of the statistics."""
        if not doc_ids:
            return 0
        old = self._query_in(self.collection, "doc_id", doc_ids, ["pid", "terms"])
        if old:
            stats = self._stats()
            old_terms = [json.loads(r["terms"]) for r in old]
            self._count_terms(old_terms, stats, -1)
            stats["passages"] -= len(old)
            stats["total_length"] -= sum(len(t) for t in old_terms)
            self._write_stats(stats)
            for i in range(0, len(old), _BATCH):
                self.client.delete(
                    self.collection, filter=f"pid in {_literals([r['pid'] for r in old[i : i + _BATCH]])}"
                )
        for i in range(0, len(doc_ids), _BATCH):
            self.client.delete(self._docs, filter=f"doc_id in {_literals(list(doc_ids[i : i + _BATCH]))}")
        return len(old)

    def _query_in(self, collection: str, field: str, values: Sequence[str], fields: list[str]) -> list[dict]:
        out = []
        for i in range(0, len(values), _BATCH):
            out.extend(
                self.client.query(
                    collection, filter=f"{field} in {_literals(list(values[i : i + _BATCH]))}", output_fields=fields
                )
            )
        return out

    def _count_terms(self, passage_terms: list[list[str]], stats: dict, sign: int) -> dict[str, int]:
        """Add (+1) or take out (-1) the passages' terms from the document frequencies; new terms get ids."""
        df = Counter(t for terms in passage_terms for t in set(terms))
        if not df:
            return {}
        known = self._term_rows(list(df))
        rows = []
        for term, n in df.items():
            row = known.get(term)
            if row is None:
                row = {"term": term, "tid": stats["next_tid"], "df": 0}
                stats["next_tid"] += 1
            rows.append({**row, "df": row["df"] + sign * n, "info": {}, "placeholder": [0.0] * _PLACEHOLDER_DIM})
        for i in range(0, len(rows), _BATCH):
            self.client.upsert(self._terms, rows[i : i + _BATCH])
        return {r["term"]: r["tid"] for r in rows}

    def _settle_avgdl(self, stats: dict) -> float:
        """The average passage length of the statistics; when it moved, every stored passage's BM25
        weights are rewritten with it, so that scores stay those of a fresh build."""
        avgdl = stats["total_length"] / stats["passages"] if stats["passages"] else 0.0
        if self.analyzer is not None and avgdl != stats["avgdl"]:
            self._reweight(avgdl)
        stats["avgdl"] = avgdl
        return avgdl

    def _reweight(self, avgdl: float) -> None:
        tids: dict[str, int] = {}
        for batch in self._pages(self.collection, ["pid", "terms"]):
            terms = [json.loads(r["terms"]) for r in batch]
            missing = {t for ts in terms for t in ts} - tids.keys()
            tids.update({t: r["tid"] for t, r in self._term_rows(list(missing)).items()})
            rows = [
                {"pid": r["pid"], "sparse": bm25_tf_weights([tids[t] for t in ts], avgdl)}
                for r, ts in zip(batch, terms)
            ]
            self.client.upsert(self.collection, rows, partial_update=True)

    def _insert_documents(self, documents: Sequence[Document], stats: dict) -> None:
        extra = self._has_field(self._docs, "sha256")  # a collection of an older build has neither field
        rows = (row for seq, d in enumerate(documents, stats["next_doc_seq"]) for row in _document_rows(d, seq, extra))
        self._insert_batches(self._docs, rows)
        stats["next_doc_seq"] += len(documents)

    def _insert_batches(
        self, collection: str, rows: Iterator[dict], *, total: int | None = None, show_progress: bool = False
    ) -> None:
        from tqdm.auto import tqdm

        batch = []
        for row in tqdm(rows, total=total, desc=f"writing {collection}", unit="row", disable=not show_progress):
            batch.append(row)
            if len(batch) == _BATCH:
                self.client.insert(collection, batch)
                batch = []
        if batch:
            self.client.insert(collection, batch)

    # -- reading --------------------------------------------------------------------------------

    def _pages(self, collection: str, fields: list[str], expr: str = "") -> Iterator[list[dict]]:
        """Every row, a window of `seq` at a time (a query's limit picks any matching rows, not the first)."""
        end = self._stats()["next_seq" if collection == self.collection else "next_doc_seq"]
        for low in range(0, end, _BATCH):
            where = f"seq >= {low} and seq < {low + _BATCH}" + (f" and ({expr})" if expr else "")
            rows = self.client.query(collection, filter=where, output_fields=["seq", *fields])
            if rows:
                yield sorted(rows, key=lambda r: r["seq"])

    def _count_documents(self) -> int:
        return self.client.query(self._docs, filter="chunk == 0", output_fields=["count(*)"])[0]["count(*)"]

    def _count_passages(self) -> int:
        return self.client.query(self.collection, filter="", output_fields=["count(*)"])[0]["count(*)"]

    def _iter_documents(self) -> Iterator[Document]:
        for batch in self._pages(self._docs, ["doc_id"], "chunk == 0"):
            for row in batch:
                yield self.document(row["doc_id"])

    def _iter_passages(self) -> Iterator[Passage]:
        for batch in self._pages(self.collection, self._passage_fields):
            yield from (_passage(r) for r in batch)

    def document(self, doc_id: str) -> Document:
        fields = ["chunk", "title", "source", "text", "meta"]
        has_regions = self._has_field(self._docs, "regions")
        rows = self._query_in(self._docs, "doc_id", [doc_id], [*fields, *(["regions"] if has_regions else [])])
        if not rows:
            raise KeyError(doc_id)
        rows.sort(key=lambda r: r["chunk"])
        first = rows[0]
        text = "".join(r["text"] for r in rows)
        regions: tuple = ()
        if has_regions and (saved := "".join(r["regions"] for r in rows)):
            from kqa.retrieval.retriever import _regions_of

            try:
                regions = _regions_of(json.loads(saved), len(text))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{self.uri}: document {doc_id!r} in {self._docs!r}: bad regions: {err}") from None
        return Document(
            id=doc_id, title=first["title"], text=text, source=first["source"], metadata=first["meta"], regions=regions
        )

    def retrieve(self, query: str, k: int = 5, *, method: str | None = None, filters=None) -> list[RetrievedPassage]:
        return self.retrieve_many([query], k, method=method, filters=filters)[0]

    def retrieve_many(
        self, queries: Sequence[str], k: int = 5, *, method: str | None = None, filters=None
    ) -> list[list[RetrievedPassage]]:
        """As `Retriever.retrieve_many`; `filters` (kqa.retrieval.filters) limit the passages ranked to
        those of documents whose metadata passes."""
        method = check_retrieval_call(
            method or self.settings.method,
            k,
            queries,
            has_sparse=self.analyzer is not None,
            has_dense=self.embedder is not None,
        )
        metadata_filter = parse_filters(filters)
        expr, check_here = filter_expression(metadata_filter)
        n = k if method != "hybrid" else max(k, self.settings.candidates)
        sparse_hits = dense_hits = None
        if method != "dense":
            sparse_queries = self._query_vectors(queries)
            sparse_hits = self._search("sparse", sparse_queries, n, expr, metadata_filter, check_here)
        if method != "sparse":
            dense_queries = self.embedder.embed_queries(queries)
            dense_hits = self._search(
                "dense", [v.tolist() for v in dense_queries], n, expr, metadata_filter, check_here
            )
        results = []
        for i in range(len(queries)):
            if method == "sparse":
                ranked = [(h, h["score"], h["score"], None) for h in sparse_hits[i][:k]]
            elif method == "dense":
                ranked = [(h, h["score"], None, h["score"]) for h in dense_hits[i][:k]]
            else:
                ranked = self._fuse(sparse_hits[i], dense_hits[i], sparse_queries[i], dense_queries[i], k)
            results.append(
                [
                    RetrievedPassage(_passage(h), rank=r, score=float(s), sparse_score=sp, dense_score=de)
                    for r, (h, s, sp, de) in enumerate(ranked, 1)
                ]
            )
        return results

    def _query_vectors(self, queries: Sequence[str]) -> list[dict[int, float]]:
        """Each query's BM25 vector: idf × count of its terms the index knows (as BM25Index.scores)."""
        analysed = [self.analyzer(q) for q in queries]
        known = self._term_rows([t for terms in analysed for t in terms if t])
        passages = self._stats()["passages"]
        vectors = []
        for terms in analysed:
            counts = Counter(t for t in terms if t in known and known[t]["df"] > 0)
            vectors.append({known[t]["tid"]: bm25_idf(known[t]["df"], passages) * c for t, c in counts.items()})
        return vectors

    def _search(self, field, vectors, n, expr, metadata_filter, check_here) -> list[list[dict]]:
        """The n best hits of each query vector, best first (ties: lower seq, as top_k's lower index)."""
        out = []
        for vector in vectors:
            if field == "sparse" and not vector:  # no known term: BM25 finds nothing
                out.append([])
                continue
            limit = min(n * GLOB_OVERFETCH if check_here else n, MAX_TOPK)
            while True:
                hits = self._search_one(field, vector, limit, expr)
                kept = [h for h in hits if metadata_filter.matches(h["meta"])] if check_here else hits
                if len(kept) >= n or len(hits) < limit or limit >= MAX_TOPK:
                    break
                limit = min(limit * GLOB_OVERFETCH, MAX_TOPK)
            out.append(kept[:n])
        return out

    @property
    def dense_index_kind(self) -> str | None:
        """The kind of the collection's dense index as Milvus reports it, "HNSW" or "FLAT" (None: no dense)."""
        if self.embedder is None:
            return None
        if self._dense_kind is None:
            self._dense_kind = self.client.describe_index(self.collection, "dense")["index_type"]
        return self._dense_kind

    def _search_params(self, field: str, limit: int) -> dict:
        if field == "dense" and self.dense_index_kind == "HNSW":  # Milvus wants a beam at least the limit
            return {"metric_type": "IP", "params": {"ef": max(self.settings.ann_settings().ef_search, limit)}}
        return {"metric_type": "IP"}

    def _search_one(self, field: str, vector, limit: int, expr: str) -> list[dict]:
        result = self.client.search(
            self.collection,
            data=[vector],
            anns_field=field,
            limit=limit,
            filter=expr,
            search_params=self._search_params(field, limit),
            output_fields=[*self._passage_fields, "meta"],
        )[0]
        hits = [{**dict(h["entity"]), "score": float(h["distance"])} for h in result]
        if field == "sparse":
            hits = [h for h in hits if h["score"] > 0]
        hits.sort(key=lambda h: (-h["score"], h["seq"]))
        return hits

    def _fuse(self, sparse_hits, dense_hits, sparse_query, dense_query, k) -> list[tuple]:
        """kqa's fusion over each side's candidates, then both scores of the k kept (the side that did
        not return a passage is asked for its score, as Retriever reports every passage's two scores)."""
        n = self.settings.candidates
        sparse_hits, dense_hits = sparse_hits[:n], dense_hits[:n]
        by_seq = {h["seq"]: h for h in [*dense_hits, *sparse_hits]}
        sides = [np.array([h["seq"] for h in hits], dtype=np.int64) for hits in (sparse_hits, dense_hits)]
        if self.settings.fusion == "rrf":
            ranked, fused = reciprocal_rank_fusion(sides, k=self.settings.rrf_k)
        else:
            w = self.settings.dense_weight
            scores = [np.array([h["score"] for h in hits], dtype=np.float64) for hits in (sparse_hits, dense_hits)]
            ranked, fused = score_fusion(list(zip(sides, scores)), [1.0 - w, w])
        kept = [by_seq[s] for s in ranked[:k].tolist()]
        sparse_scores = {h["seq"]: h["score"] for h in sparse_hits}
        dense_scores = {h["seq"]: h["score"] for h in dense_hits}
        missing_sparse = [h["pid"] for h in kept if h["seq"] not in sparse_scores]
        missing_dense = [h["pid"] for h in kept if h["seq"] not in dense_scores]
        # The side that did not return a passage scores it here, from its stored vectors fetched by primary
        # key: a search filtered to those pids costs a whole search (~50 ms at 10^5 passages on Lite).
        if missing_sparse and sparse_query:
            for row in self.client.get(self.collection, ids=missing_sparse, output_fields=["seq", "sparse"]):
                score = float(
                    sum(np.float32(w) * np.float32(sparse_query.get(int(t), 0.0)) for t, w in row["sparse"].items())
                )
                if score > 0:  # as a BM25 search: a passage with no query term has no sparse score
                    sparse_scores[row["seq"]] = score
        if missing_dense:
            query32 = np.asarray(dense_query, dtype=np.float32)
            for row in self.client.get(self.collection, ids=missing_dense, output_fields=["seq", "dense"]):
                dense_scores[row["seq"]] = float(np.dot(np.asarray(row["dense"], dtype=np.float32), query32))
        return [
            (h, s, sparse_scores.get(h["seq"], 0.0), dense_scores.get(h["seq"]))
            for h, s in zip(kept, fused[:k].tolist())
        ]

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """The manifest that `open_index` reads: where the collections are and what built them (no
        secrets: a token comes from $MILVUS_TOKEN)."""
        from kqa import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        uri = self.uri
        if is_local_uri(uri):  # a file inside the index folder is recorded relative to it, so the folder moves
            path = Path(uri).resolve()
            uri = os.path.relpath(path, directory.resolve()) if directory.resolve() in path.parents else str(path)
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "kqa_version": __version__,
            "backend": "milvus",
            "uri": uri,
            "collection": self.collection,
            "token_env": TOKEN_ENV,
            "settings": asdict(self.settings),
            "passage_settings": asdict(self.passage_settings),
            "bm25": {"k1": BM25_K1, "b": BM25_B, "computed": "client-side, bm25s's Lucene formula"},
            "analyzer": None
            if self.analyzer is None
            else {"name": self.analyzer.name, "version": self.analyzer.version},
            "embedder": None if self.embedder is None else self.embedder.identity(),
            "corpus_report": self.corpus_report,
            "build_seconds": self.build_seconds,
        }
        (directory / "index.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder: Embedder | str | Path | None = None,
        method: str | None = None,
        device: str | None = None,
    ) -> MilvusStore:
        """Open the collections a manifest names, checking the analyzer and the embedder as
        `Retriever.load` does."""
        from kqa.retrieval.retriever import _matching_embedder

        directory = Path(directory)
        manifest = read_manifest(directory)
        settings = RetrieverSettings(**manifest["settings"])
        if method is not None:
            settings = RetrieverSettings(**{**asdict(settings), "method": method})
        if manifest.get("analyzer"):
            analyzer = make_analyzer(manifest["analyzer"]["name"])
            if analyzer.version != manifest["analyzer"]["version"]:
                raise IndexMismatchError(
                    f"{directory}: built with the {analyzer.name} analyzer of {manifest['analyzer']['version']}, "
                    f"this machine has {analyzer.version}: its terms may differ; rebuild the index with kqa index"
                )
        elif settings.method in ("sparse", "hybrid"):
            raise ValueError(f"{directory}: method {settings.method!r} needs BM25, and this index has none")
        if manifest.get("embedder"):
            embedder = _matching_embedder(directory, manifest["embedder"], embedder, device)
        elif settings.uses_dense:
            raise ValueError(f"{directory}: method {settings.method!r} needs embeddings, and this index has none")
        uri = manifest["uri"]
        if is_local_uri(uri) and not Path(uri).is_absolute():
            uri = str(directory / uri)
        client = connect(uri)
        collection = manifest["collection"]
        for name in (collection, f"{collection}_documents", f"{collection}_terms"):
            if not client.has_collection(name):
                raise FileNotFoundError(f"{directory}: Milvus at {uri} has no collection {name!r}; rebuild the index")
            client.load_collection(name)
        if not settings.uses_dense:
            embedder = None
        return cls(
            client,
            uri,
            collection,
            settings,
            embedder=embedder,
            passage_settings=PassageSettings(**manifest["passage_settings"]),
            corpus_report=manifest.get("corpus_report"),
            build_seconds=manifest.get("build_seconds"),
        )

    def close(self) -> None:
        """Close the connection; for a Milvus Lite file also stop its in-process server, which holds the
        file's lock (one process, one open store, at a time)."""
        self.client.close()
        if is_local_uri(self.uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)


_PASSAGE_FIELDS = ["pid", "seq", "doc_id", "title", "start", "end", "text"]


def _passage(row: dict) -> Passage:
    return Passage(
        index=int(row["seq"]),
        doc_id=row["doc_id"],
        title=row["title"],
        text=row["text"],
        start=int(row["start"]),
        end=int(row["end"]),
        location=row.get("location") or None,
    )


def _document_rows(d: Document, seq: int, extra: bool) -> Iterator[dict]:
    """A document's rows: its text (and regions) in chunks that each fit a VARCHAR; metadata on chunk 0."""
    texts = _chunks(d.text)
    regions = _chunks(json.dumps([list(r) for r in d.regions], ensure_ascii=False)) if d.regions else []
    for c in range(max(len(texts), len(regions), 1)):
        row = {
            "key": f"{c} {d.id}",
            "doc_id": d.id,
            "seq": seq,
            "chunk": c,
            "title": d.title,
            "source": d.source,
            "text": texts[c] if c < len(texts) else "",
            "meta": d.metadata if c == 0 else {},
            "placeholder": [0.0] * _PLACEHOLDER_DIM,
        }
        if extra:
            row["sha256"] = document_hash(d) if c == 0 else ""
            row["regions"] = regions[c] if c < len(regions) else ""
        yield row


def _check_varchars(where: str, **fields: str | None) -> None:
    for name, value in fields.items():
        if value and len(value.encode()) > MAX_VARCHAR:
            raise ValueError(f"{where}: passage field {name!r} is over Milvus's {MAX_VARCHAR} bytes")


def _chunks(text: str) -> list[str]:
    """`text` in pieces that each fit a VARCHAR field."""
    return [text[i : i + DOCUMENT_CHUNK_CHARS] for i in range(0, len(text), DOCUMENT_CHUNK_CHARS)]


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / "index.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable index manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a kqa Milvus index manifest")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path}: Milvus manifest version {manifest.get('format_version')!r}, this kqa reads {MANIFEST_VERSION}"
        )
    for key in ("uri", "collection", "settings", "passage_settings"):
        if key not in manifest:
            raise ValueError(f"{path}: the manifest has no {key!r}")
    return manifest
