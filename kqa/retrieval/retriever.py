"""`Retriever`: passages of a corpus, a BM25 index and/or passage embeddings, and the ranking over them.

    documents, report = load_corpus("my_docs/")
    retriever = Retriever.build(documents, embedder=Embedder.from_pretrained("models/e5-small"))
    retriever.save("my_index")
    retriever = Retriever.load("my_index")          # loads the embedder it was built with, and checks it
    for hit in retriever.retrieve("세종대왕은 언제 훈민정음을 반포했나?", k=5): ...

    retriever.update(load_corpus("my_docs/")[0])      # re-analyses only new and changed documents
    retriever.save("my_index")                        # a new generation, switched to atomically

On disk (no pickle anywhere), in IDX/generations/N/ with IDX/CURRENT naming N (kqa.retrieval.store):
    index.json              manifest: settings, counts, corpus report, analyzer and embedder identity
    documents.jsonl         id, title, source, text, metadata and content sha256 of every document (+ regions:
                            [start, end, label] of PDF, HTML and DOCX documents, e.g. [0, 812, "page 1"])
    passages.safetensors    doc / start / end of every passage (+ "embeddings" [n, d] float32 when dense,
                            + "term_ids" / "term_offsets": each passage's analysed terms, for updates)
    terms.json              the vocabulary "term_ids" index into
    bm25/                   bm25s's arrays (.npy read with allow_pickle=False) and vocabulary (JSON)
    dense.hnsw              the HNSW graph of approximate dense search, when built (kqa/retrieval/ann.py):
                            faiss.write_index of its links only; the vectors are the "embeddings" above
Format version 1 (the same files directly in IDX, without metadata or terms) still loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kqa.retrieval import ann as ann_search
from kqa.retrieval import store
from kqa.retrieval.corpus import CorpusReport, Document, Passage, PassageSettings, passage_of, split_corpus
from kqa.retrieval.dense import DenseIndex, Embedder, EmbedderSettings
from kqa.retrieval.filters import MetadataFilter, parse_filters
from kqa.retrieval.fusion import DEFAULT_RRF_K, FUSIONS, reciprocal_rank_fusion, score_fusion, top_k
from kqa.retrieval.sparse import ANALYZERS, BM25Index, make_analyzer
from kqa.retrieval.update import UpdateReport, document_hash, update_retriever

INDEX_FORMAT = "kqa-retrieval-index"
INDEX_FORMAT_VERSION = 2  # 2: generations, document metadata, stored passage terms
READABLE_FORMAT_VERSIONS = (1, 2)
METHODS = ("sparse", "dense", "hybrid")


def check_retrieval_call(method: str, k, queries: Sequence[str], *, has_sparse: bool, has_dense: bool) -> str:
    """The checks of a `retrieve_many` call that every index makes (this one and the Milvus store): the
    method, k, each query, and that the index holds the parts the method ranks by. Returns the method."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query {i}: expected a non-empty string, got {query!r}")
    if method in ("sparse", "hybrid") and not has_sparse:
        raise ValueError(f"method {method!r}: this index has no BM25 part (built with method='dense')")
    if method in ("dense", "hybrid") and not has_dense:
        raise ValueError(f"method {method!r}: this index has no embeddings (built with method='sparse')")
    return method


class IndexMismatchError(ValueError):
    """An index loaded with another embedding model or analyzer than the one it was built with."""


@dataclass(frozen=True)
class RetrieverSettings:
    """`method`: what `retrieve` ranks by. "sparse" needs an analyzer, "dense" an embedder, "hybrid"
    both. Hybrid fuses each side's best `candidates` passages with `fusion`: "rrf" (reciprocal-rank
    fusion, constant `rrf_k`) or "score" (min-max normalised scores, `dense_weight` vs 1 - it)."""

    method: str = "hybrid"
    analyzer: str | None = "morphemes"
    fusion: str = "score"  # measured better than "rrf" on both dev sets, at every depth (docs/retrieval.md)
    rrf_k: int = DEFAULT_RRF_K
    dense_weight: float = 0.5
    candidates: int = 100
    ann: str = "auto"  # approximate dense search (HNSW): "auto" from `ann_threshold` passages on, "on", "off"
    ann_threshold: int = ann_search.DEFAULT_ANN_THRESHOLD

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.analyzer is not None and self.analyzer not in ANALYZERS:
            raise ValueError(f"analyzer must be one of {sorted(ANALYZERS)} or None, got {self.analyzer!r}")
        if self.method in ("sparse", "hybrid") and self.analyzer is None:
            raise ValueError(f"method {self.method!r} needs an analyzer")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ValueError(f"dense_weight must be in [0, 1], got {self.dense_weight!r}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise ValueError(f"candidates must be a positive int, got {self.candidates!r}")
        self.ann_settings()  # checks ann and ann_threshold

    def ann_settings(self) -> ann_search.AnnSettings:
        return ann_search.AnnSettings(mode=self.ann, threshold=self.ann_threshold)

    @property
    def uses_dense(self) -> bool:
        return self.method in ("dense", "hybrid")


@dataclass
class RetrievedPassage:
    passage: Passage
    rank: int  # 1 = best
    score: float  # of the method that ranked it: BM25, cosine, or the fused score
    sparse_score: float | None = None
    dense_score: float | None = None

    def to_dict(self) -> dict:
        p = self.passage
        return {
            "rank": self.rank,
            "score": self.score,
            "sparse_score": self.sparse_score,
            "dense_score": self.dense_score,
            "doc_id": p.doc_id,
            "title": p.title,
            "passage_id": p.id,
            "start": p.start,
            "end": p.end,
            "location": p.location,
            "text": p.text,
        }


@dataclass
class IndexInfo:
    """What the manifest says besides the settings and the identities of the parts (which the analyzer
    and the embedder give themselves)."""

    passage_settings: PassageSettings = field(default_factory=PassageSettings)
    corpus_report: dict = field(default_factory=dict)
    build_seconds: dict = field(default_factory=dict)
    last_update: dict = field(default_factory=dict)  # UpdateReport.to_dict() of the last update


class Retriever:
    def __init__(
        self,
        documents: Sequence[Document],
        passages: Sequence[Passage],
        settings: RetrieverSettings,
        *,
        analyzer=None,
        sparse: BM25Index | None = None,
        embedder: Embedder | None = None,
        dense: DenseIndex | None = None,
        info: IndexInfo | None = None,
        passage_terms: list[list[str]] | None = None,
    ):
        if settings.analyzer is not None and (analyzer is None or sparse is None):
            raise ValueError("settings name an analyzer, but no analyzer / BM25 index was given")
        if settings.uses_dense and (embedder is None or dense is None):
            raise ValueError(f"method {settings.method!r} needs an embedder and passage embeddings")
        for name, index in (("BM25", sparse), ("dense", dense)):
            if index is not None and index.num_passages != len(passages):
                raise ValueError(f"the {name} index holds {index.num_passages} passages, the corpus {len(passages)}")
        self.documents = list(documents)
        self.passages = list(passages)
        self.settings = settings
        self.analyzer, self.sparse = analyzer, sparse
        self.embedder, self.dense = embedder, dense
        self.info = info or IndexInfo()
        # The analysed terms of each passage (None for an index of format 1): an update rebuilds BM25 from them.
        self.passage_terms = passage_terms
        self.reindex()

    def reindex(self) -> None:
        """Recompute the lookups derived from `documents` and `passages` (after an update)."""
        self._documents_by_id = {d.id: d for d in self.documents}
        position = {d.id: i for i, d in enumerate(self.documents)}
        self._passage_doc = np.array([position[p.doc_id] for p in self.passages], dtype=np.int64)

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        documents: Sequence[Document],
        settings: RetrieverSettings = RetrieverSettings(),
        *,
        embedder: Embedder | None = None,
        passage_settings: PassageSettings = PassageSettings(),  # noqa: B008 - frozen, never mutated
        corpus_report: CorpusReport | None = None,
        show_progress: bool = False,
        passage_embeddings: np.ndarray | None = None,
    ) -> Retriever:
        """Split the documents into passages and index them (BM25 over the analyzer's terms, embeddings
        for dense / hybrid). Embeddings are computed here, once, unless `passage_embeddings` brings them
        (embedded by `embedder` over several processes: kqa.retrieval.sharding); queries are embedded
        at search time."""
        if not documents:
            raise ValueError("no documents to index")
        if settings.uses_dense and embedder is None:
            raise ValueError(
                f"method {settings.method!r} needs an embedder (e.g. Embedder.from_pretrained"
                "('models/e5-small')); or use method='sparse'"
            )
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        passages = split_corpus(documents, passage_settings)
        seconds["split"] = time.perf_counter() - t
        if not passages:
            raise ValueError(f"the {len(documents)} documents hold no text to index (every one is blank)")
        analyzer = sparse = dense = terms = None
        if settings.analyzer is not None:
            t = time.perf_counter()
            analyzer = make_analyzer(settings.analyzer)
            terms = analyzer.analyze_many([p.text for p in passages], show_progress=show_progress)
            seconds["analyze"] = time.perf_counter() - t
            t = time.perf_counter()
            sparse = BM25Index.build(terms, show_progress=show_progress)
            seconds["bm25"] = time.perf_counter() - t
        if settings.uses_dense:
            t = time.perf_counter()
            embeddings = passage_embeddings  # embedded already (kqa.retrieval.sharding); the Retriever checks its rows
            if embeddings is None:
                embeddings = embedder.embed_passages([p.text for p in passages], show_progress=show_progress)
                seconds["embed"] = time.perf_counter() - t
            dense = DenseIndex(embeddings, ann=settings.ann_settings())
            t = time.perf_counter()
            if dense.build_graph():
                seconds["ann"] = time.perf_counter() - t
        info = IndexInfo(
            passage_settings=passage_settings,
            corpus_report=corpus_report.to_dict() if corpus_report else {},
            build_seconds={k: round(v, 3) for k, v in seconds.items()},
        )
        return cls(
            documents,
            passages,
            settings,
            analyzer=analyzer,
            sparse=sparse,
            embedder=embedder if dense is not None else None,
            dense=dense,
            info=info,
            passage_terms=terms if sparse is not None else None,
        )

    # -- growing ----------------------------------------------------------------------------------

    def update(self, documents: Sequence[Document], *, show_progress: bool = False) -> UpdateReport:
        """Index exactly `documents` from now on: split, analyse and embed the passages of new and
        changed documents only, drop the documents not given, rebuild BM25 from the stored terms
        (kqa.retrieval.update). `save` writes the result."""
        report = update_retriever(self, documents, show_progress=show_progress)
        self.info.last_update = report.to_dict()
        return report

    def delete(self, doc_ids: Sequence[str]) -> UpdateReport:
        """Remove documents by id; an id the index does not hold is an error (nothing is removed)."""
        missing = [i for i in doc_ids if i not in self._documents_by_id]
        if missing:
            raise ValueError(f"no document with id {', '.join(map(repr, missing[:10]))} in the index")
        gone = set(doc_ids)
        return self.update([d for d in self.documents if d.id not in gone])

    # -- searching --------------------------------------------------------------------------------

    def document(self, doc_id: str) -> Document:
        return self._documents_by_id[doc_id]

    def retrieve(self, query: str, k: int = 5, *, method: str | None = None, filters=None) -> list[RetrievedPassage]:
        return self.retrieve_many([query], k, method=method, filters=filters)[0]

    def passage_mask(self, filters) -> np.ndarray | None:
        """Which passages belong to documents whose metadata passes `filters` (None: no filter)."""
        metadata_filter: MetadataFilter = parse_filters(filters)
        if not metadata_filter:
            return None
        return metadata_filter.mask([d.metadata for d in self.documents])[self._passage_doc]

    def retrieve_many(
        self, queries: Sequence[str], k: int = 5, *, method: str | None = None, filters=None
    ) -> list[list[RetrievedPassage]]:
        """The k best passages of each query (fewer when the method finds fewer: BM25 returns only
        passages that share a term with the query), among the passages of documents whose metadata
        passes `filters` (strings or a `MetadataFilter`, kqa.retrieval.filters; fewer than k when
        fewer pass)."""
        method = check_retrieval_call(
            method or self.settings.method,
            k,
            queries,
            has_sparse=self.sparse is not None,
            has_dense=self.dense is not None,
        )
        mask = self.passage_mask(filters)
        dense_hits = query_vectors = None
        if method != "sparse":
            # The dense side's best passages only (search exact or HNSW): no [queries, passages] score matrix.
            query_vectors = self.embedder.embed_queries(queries)
            depth = k if method == "dense" else self.settings.candidates
            dense_hits = self.dense.search(query_vectors, depth, allowed=mask)
        results = []
        for i, query in enumerate(queries):
            sparse_scores = dense_top = None
            if method != "dense":
                sparse_scores = self.sparse.scores(self.analyzer(query))
                if mask is not None:  # a score of 0 is no match: excluded passages never rank
                    sparse_scores = np.where(mask, sparse_scores, np.float32(0.0))
            if dense_hits is not None:
                found = dense_hits[0][i] >= 0  # padding where fewer passages than asked are allowed
                dense_top = (dense_hits[0][i][found], dense_hits[1][i][found])
            if method == "sparse":
                ranked = top_k(sparse_scores, k, positive_only=True)
                fused = sparse_scores[ranked]
            elif method == "dense":
                ranked, fused = dense_top
            else:
                ranked, fused = self._fuse(sparse_scores, dense_top)
                ranked, fused = ranked[:k], fused[:k]
            dense_scores = None if dense_top is None else self._dense_scores(query_vectors[i], dense_top, ranked)
            results.append(
                [
                    RetrievedPassage(
                        self.passages[p],
                        rank=r,
                        score=float(s),
                        sparse_score=None if sparse_scores is None else float(sparse_scores[p]),
                        dense_score=None if dense_scores is None else dense_scores[p],
                    )
                    for r, (p, s) in enumerate(zip(ranked.tolist(), fused.tolist()), 1)
                ]
            )
        return results

    def _dense_scores(self, query_vector: np.ndarray, dense_top, ranked: np.ndarray) -> dict[int, float]:
        """Cosine of each ranked passage: from the dense search, or computed for those only BM25 found."""
        scores = dict(zip(dense_top[0].tolist(), dense_top[1].tolist()))
        missing = np.array([p for p in ranked.tolist() if p not in scores], dtype=np.int64)
        if missing.size:
            scores.update(zip(missing.tolist(), self.dense.scores_of(query_vector, missing).tolist()))
        return scores

    def _fuse(
        self, sparse_scores: np.ndarray, dense_top: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`dense_top`: the dense search's (indices, scores) of the `candidates` best passages."""
        sparse_top = top_k(sparse_scores, self.settings.candidates, positive_only=True)
        if self.settings.fusion == "rrf":
            return reciprocal_rank_fusion([sparse_top, dense_top[0]], k=self.settings.rrf_k)
        w = self.settings.dense_weight
        return score_fusion([(sparse_top, sparse_scores[sparse_top]), dense_top], [1.0 - w, w])

    # -- persistence ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the index as a new generation of `directory` and switch to it atomically (killed at
        any point, `directory` holds the old version or the new one: kqa.retrieval.store). Returns the
        generation's directory, itself a loadable index."""
        index_dir = Path(directory)
        target = store.begin_generation(index_dir)
        self._write_files(target)
        store.pause_point("generation-written")
        store.commit_generation(index_dir, target)
        return target

    def _write_files(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        from kqa import __version__

        with open(directory / "documents.jsonl", "w", encoding="utf-8") as f:
            for d in self.documents:
                row = {"id": d.id, "title": d.title, "source": d.source, "text": d.text}
                row |= {"metadata": d.metadata, "sha256": document_hash(d)}
                if d.regions:  # [[start, end, label], ...]; absent for plain text (and in older indexes)
                    row["regions"] = [list(r) for r in d.regions]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        store.pause_point("generation-partial")
        arrays = {
            "doc": self._passage_doc,
            "start": np.array([p.start for p in self.passages], dtype=np.int64),
            "end": np.array([p.end for p in self.passages], dtype=np.int64),
        }
        if self.dense is not None:
            arrays["embeddings"] = self.dense.embeddings
        if self.passage_terms is not None:
            vocabulary, arrays["term_ids"], arrays["term_offsets"] = _flat_terms(self.passage_terms)
            (directory / "terms.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
        save_file(arrays, str(directory / "passages.safetensors"))
        if self.sparse is not None:
            self.sparse.save(directory / "bm25")
        if self.dense is not None:
            save_ann(self.dense, directory)
        manifest = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "kqa_version": __version__,
            "settings": asdict(self.settings),
            "passage_settings": asdict(self.info.passage_settings),
            "documents": len(self.documents),
            "passages": len(self.passages),
            # identities of the parts themselves (a Retriever assembled by hand records them too)
            "analyzer": None if self.sparse is None else {"name": self.analyzer.name, "version": self.analyzer.version},
            "embedder": None if self.dense is None else self.embedder.identity(),
            "dense_search": None if self.dense is None else self.dense.search_parameters(),
            "corpus_report": self.info.corpus_report,
            "build_seconds": self.info.build_seconds,
            "last_update": self.info.last_update,
        }
        (directory / "index.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder: Embedder | str | Path | None = None,
        method: str | None = None,
        device: str | None = None,
    ) -> Retriever:
        """Load a saved index. With embeddings, the embedding model is the one recorded in the index
        (or `embedder`: an `Embedder`, or a name / path to load); it must be the model the passages were
        embedded with (same weights and vocabulary), else `IndexMismatchError`. So must the analyzer's
        version. `method` overrides the saved default ranking. `directory` is an index directory (its
        current generation is read) or one generation's directory."""
        index_dir = Path(directory)
        try:
            return cls._load_files(store.files_dir(index_dir), embedder=embedder, method=method, device=device)
        except FileNotFoundError:
            # An update switched generations and removed the one being read: read the new one, once.
            if store.current_generation(index_dir) is None:
                raise
            return cls._load_files(store.files_dir(index_dir), embedder=embedder, method=method, device=device)

    @classmethod
    def _load_files(cls, directory: Path, *, embedder, method: str | None, device: str | None) -> Retriever:
        from safetensors.numpy import load_file

        manifest = _read_manifest(directory)
        settings = RetrieverSettings(**manifest["settings"])
        if method is not None:
            settings = RetrieverSettings(**{**asdict(settings), "method": method})
        documents = _read_documents(directory)
        arrays = load_file(str(directory / "passages.safetensors"))
        passages = _passages_of(directory, documents, arrays)
        analyzer, sparse = _load_sparse(directory, manifest)
        dense_index = None
        if "embeddings" in arrays:
            embedder = _matching_embedder(directory, manifest.get("embedder") or {}, embedder, device)
            dense_index = load_ann(directory, arrays.pop("embeddings"), settings, manifest.get("dense_search"))
        elif settings.uses_dense:
            raise ValueError(f"{directory}: method {settings.method!r} needs embeddings, and this index has none")
        info = IndexInfo(
            passage_settings=PassageSettings(**manifest["passage_settings"]),
            corpus_report=manifest.get("corpus_report", {}),
            build_seconds=manifest.get("build_seconds", {}),
            last_update=manifest.get("last_update", {}),
        )
        terms = _read_terms(directory, arrays) if "term_ids" in arrays else None
        return cls(
            documents,
            passages,
            settings,
            analyzer=analyzer,
            sparse=sparse,
            embedder=embedder if dense_index is not None else None,
            dense=dense_index,
            info=info,
            passage_terms=terms if sparse is not None else None,
        )


# ---- reading a saved index (Retriever.load) --------------------------------------------------------


def _read_manifest(directory: Path) -> dict:
    manifest_path = directory / "index.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{directory}: not a kqa index (no index.json); build one with kqa index")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{manifest_path}: not a readable index manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise ValueError(f"{manifest_path}: not a kqa retrieval index manifest")
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"{manifest_path}: index format version {manifest.get('format_version')!r}, "
            f"this kqa reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))}: rebuild it with kqa index"
        )
    return manifest


def _read_documents(directory: Path) -> list[Document]:
    documents = []
    with open(directory / "documents.jsonl", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                metadata = row.get("metadata", {})  # format 1 kept none
                if not isinstance(metadata, dict):
                    raise TypeError(f"metadata must be an object, got {type(metadata).__name__}")
                regions = _regions_of(row.get("regions", []), len(row["text"]))  # absent: plain text, older indexes
                documents.append(
                    Document(
                        id=row["id"],
                        title=row["title"],
                        text=row["text"],
                        source=row["source"],
                        metadata=metadata,
                        regions=regions,
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{directory / 'documents.jsonl'}:{line_no}: not a document record "
                    f"({type(err).__name__}: {err}); rebuild the index with kqa index"
                ) from None
    return documents


def _flat_terms(passage_terms: list[list[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Terms of every passage → (vocabulary, term ids of all passages end to end, offsets [n + 1])."""
    vocabulary: dict[str, int] = {}
    ids = [vocabulary.setdefault(t, len(vocabulary)) for terms in passage_terms for t in terms]
    offsets = np.cumsum([0, *map(len, passage_terms)], dtype=np.int64)
    return list(vocabulary), np.array(ids, dtype=np.int64), offsets


def _read_terms(directory: Path, arrays: dict) -> list[list[str]]:
    path = directory / "terms.json"
    try:
        vocabulary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable term vocabulary: {err}; rebuild the index with kqa index") from None
    ids, offsets = arrays["term_ids"], arrays["term_offsets"]
    if offsets.shape != (len(arrays["doc"]) + 1,) or (ids.size and not 0 <= ids.min() <= ids.max() < len(vocabulary)):
        raise ValueError(f"{directory}: stored passage terms do not match the passages; rebuild the index")
    words = np.array(vocabulary, dtype=object)[ids] if ids.size else np.array([], dtype=object)
    return [words[a:b].tolist() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _regions_of(rows: list, length: int) -> tuple[tuple[int, int, str], ...]:
    """A saved document's regions, each checked to lie inside its text."""
    regions = []
    for row in rows:
        start, end, label = row
        if not (
            isinstance(start, int) and isinstance(end, int) and isinstance(label, str) and 0 <= start <= end <= length
        ):
            raise ValueError(f"region {row!r} is not [start, end, label] inside the document's {length} characters")
        regions.append((start, end, label))
    return tuple(regions)


def _passages_of(directory: Path, documents: list[Document], arrays: dict) -> list[Passage]:
    """The passages as (document, start, end) offsets, each checked to lie inside its document."""
    passages = []
    for i, (d, s, e) in enumerate(zip(arrays["doc"].tolist(), arrays["start"].tolist(), arrays["end"].tolist())):
        if not (0 <= d < len(documents) and 0 <= s < e <= len(documents[d].text)):
            raise ValueError(f"{directory}: passage {i} points outside its document (doc {d}, {s}:{e})")
        passages.append(passage_of(documents[d], i, s, e))
    return passages


def _load_sparse(directory: Path, manifest: dict):
    """The analyzer and the BM25 index (None, None without them); the analyzer must be the version the
    index was built with, else its terms may differ."""
    if not manifest.get("analyzer"):
        return None, None
    analyzer = make_analyzer(manifest["analyzer"]["name"])
    if analyzer.version != manifest["analyzer"]["version"]:
        raise IndexMismatchError(
            f"{directory}: built with the {analyzer.name} analyzer of {manifest['analyzer']['version']}, "
            f"this machine has {analyzer.version}: its terms may differ; rebuild the index with kqa index"
        )
    return analyzer, BM25Index.load(directory / "bm25")


def _matching_embedder(directory: Path, recorded: dict, embedder, device: str | None) -> Embedder:
    """The embedder of the index (or the one given), which must be the model and settings the passages
    were embedded with."""
    if not isinstance(embedder, Embedder):
        embedder = Embedder.from_pretrained(
            embedder or recorded["name"], device=device, settings=EmbedderSettings(**recorded.get("settings", {}))
        )
    if embedder.fingerprint != recorded.get("fingerprint"):
        raise IndexMismatchError(
            f"{directory}: the passages were embedded with {recorded.get('name')!r} (fingerprint "
            f"{str(recorded.get('fingerprint'))[:12]}…), not with {embedder.name!r} (fingerprint "
            f"{embedder.fingerprint[:12]}…): query vectors of another model cannot be compared with them"
        )
    if asdict(embedder.settings) != recorded.get("settings", asdict(embedder.settings)):
        raise IndexMismatchError(
            f"{directory}: embedder settings {asdict(embedder.settings)} differ from "
            f"those the index was built with, {recorded.get('settings')}"
        )
    return embedder


# ---- the approximate dense search's graph (Retriever.save / Retriever.load) ---------------------------


def save_ann(dense: DenseIndex, directory: Path) -> None:
    """Write the HNSW graph when the index has one; remove a stale one when it has not."""
    path = directory / ann_search.ANN_FILE
    if dense.graph is not None:
        dense.graph.save(path)
    elif path.exists():
        path.unlink()


def load_ann(directory: Path, embeddings: np.ndarray, settings: RetrieverSettings, recorded: dict | None) -> DenseIndex:
    """The dense index with its graph: read from the index when it was saved with one, else built from the
    embeddings when the settings want one (a missing or older graph file is rebuilt, never an error)."""
    recorded = recorded or {}
    if recorded.get("kind") == "hnsw":
        graph_settings = ann_search.AnnSettings(
            mode=recorded.get("ann_mode", settings.ann),
            threshold=recorded.get("threshold", settings.ann_threshold),
            m=recorded.get("m", ann_search.HNSW_M),
            ef_construction=recorded.get("ef_construction", ann_search.HNSW_EF_CONSTRUCTION),
            ef_search=recorded.get("ef_search", ann_search.HNSW_EF_SEARCH),
        )
        path = directory / ann_search.ANN_FILE
        if path.is_file():
            graph = ann_search.HnswIndex.load(path, embeddings, graph_settings)
            return DenseIndex(embeddings, ann=graph_settings, graph=graph)
        dense = DenseIndex(embeddings, ann=graph_settings)
    else:
        dense = DenseIndex(embeddings, ann=settings.ann_settings())
    dense.build_graph()
    return dense
