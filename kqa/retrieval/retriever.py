"""`Retriever`: passages of a corpus, a BM25 index and/or passage embeddings, and the ranking over them.

    documents, report = load_corpus("my_docs/")
    retriever = Retriever.build(documents, embedder=Embedder.from_pretrained("models/e5-small"))
    retriever.save("my_index")
    retriever = Retriever.load("my_index")          # loads the embedder it was built with, and checks it
    for hit in retriever.retrieve("세종대왕은 언제 훈민정음을 반포했나?", k=5): ...

On disk (no pickle anywhere):
    index.json              manifest: settings, counts, corpus report, analyzer and embedder identity
    documents.jsonl         id, title, source, text of every document
    passages.safetensors    doc / start / end of every passage (+ "embeddings" [n, d] float32 when dense)
    bm25/                   bm25s's arrays (.npy read with allow_pickle=False) and vocabulary (JSON)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kqa.retrieval.corpus import CorpusReport, Document, Passage, PassageSettings, split_corpus
from kqa.retrieval.dense import DenseIndex, Embedder, EmbedderSettings
from kqa.retrieval.fusion import DEFAULT_RRF_K, FUSIONS, reciprocal_rank_fusion, score_fusion, top_k
from kqa.retrieval.sparse import ANALYZERS, BM25Index, make_analyzer

INDEX_FORMAT = "kqa-retrieval-index"
INDEX_FORMAT_VERSION = 1
METHODS = ("sparse", "dense", "hybrid")


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
            "text": p.text,
        }


@dataclass
class IndexInfo:
    """What the manifest says besides the settings and the identities of the parts (which the analyzer
    and the embedder give themselves)."""

    passage_settings: PassageSettings = field(default_factory=PassageSettings)
    corpus_report: dict = field(default_factory=dict)
    build_seconds: dict = field(default_factory=dict)


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
        self._documents_by_id = {d.id: d for d in self.documents}

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
        analyzer = sparse = dense = None
        if settings.analyzer is not None:
            t = time.perf_counter()
            analyzer = make_analyzer(settings.analyzer)
            terms = analyzer.analyze_many([p.text for p in passages], show_progress=show_progress)
            seconds["analyze"] = time.perf_counter() - t
            t = time.perf_counter()
            sparse = BM25Index.build(terms, show_progress=show_progress)
            seconds["bm25"] = time.perf_counter() - t
        if settings.uses_dense and passage_embeddings is not None:
            dense = DenseIndex(passage_embeddings)  # the Retriever checks it holds one row per passage
        elif settings.uses_dense:
            t = time.perf_counter()
            dense = DenseIndex(embedder.embed_passages([p.text for p in passages], show_progress=show_progress))
            seconds["embed"] = time.perf_counter() - t
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
        )

    # -- searching --------------------------------------------------------------------------------

    def document(self, doc_id: str) -> Document:
        return self._documents_by_id[doc_id]

    def retrieve(self, query: str, k: int = 5, *, method: str | None = None) -> list[RetrievedPassage]:
        return self.retrieve_many([query], k, method=method)[0]

    def retrieve_many(
        self, queries: Sequence[str], k: int = 5, *, method: str | None = None
    ) -> list[list[RetrievedPassage]]:
        """The k best passages of each query (fewer when the method finds fewer: BM25 returns only
        passages that share a term with the query)."""
        method = method or self.settings.method
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        for i, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"query {i}: expected a non-empty string, got {query!r}")
        if method in ("sparse", "hybrid") and self.sparse is None:
            raise ValueError(f"method {method!r}: this index has no BM25 part (built with method='dense')")
        if method in ("dense", "hybrid") and self.dense is None:
            raise ValueError(f"method {method!r}: this index has no embeddings (built with method='sparse')")
        dense_scores = self.dense.scores(self.embedder.embed_queries(queries)) if method != "sparse" else None
        results = []
        for i, query in enumerate(queries):
            sparse_scores = self.sparse.scores(self.analyzer(query)) if method != "dense" else None
            if method == "sparse":
                ranked = top_k(sparse_scores, k, positive_only=True)
                fused = sparse_scores[ranked]
            elif method == "dense":
                ranked = top_k(dense_scores[i], k)
                fused = dense_scores[i][ranked]
            else:
                ranked, fused = self._fuse(sparse_scores, dense_scores[i])
                ranked, fused = ranked[:k], fused[:k]
            results.append(
                [
                    RetrievedPassage(
                        self.passages[p],
                        rank=r,
                        score=float(s),
                        sparse_score=None if sparse_scores is None else float(sparse_scores[p]),
                        dense_score=None if dense_scores is None else float(dense_scores[i][p]),
                    )
                    for r, (p, s) in enumerate(zip(ranked.tolist(), fused.tolist()), 1)
                ]
            )
        return results

    def _fuse(self, sparse_scores: np.ndarray, dense_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.settings.candidates
        sparse_top = top_k(sparse_scores, n, positive_only=True)
        dense_top = top_k(dense_scores, n)
        if self.settings.fusion == "rrf":
            return reciprocal_rank_fusion([sparse_top, dense_top], k=self.settings.rrf_k)
        w = self.settings.dense_weight
        return score_fusion(
            [(sparse_top, sparse_scores[sparse_top]), (dense_top, dense_scores[dense_top])], [1.0 - w, w]
        )

    # -- persistence ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        from kqa import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        doc_index = {d.id: i for i, d in enumerate(self.documents)}
        arrays = {
            "doc": np.array([doc_index[p.doc_id] for p in self.passages], dtype=np.int64),
            "start": np.array([p.start for p in self.passages], dtype=np.int64),
            "end": np.array([p.end for p in self.passages], dtype=np.int64),
        }
        if self.dense is not None:
            arrays["embeddings"] = self.dense.embeddings
        save_file(arrays, str(directory / "passages.safetensors"))
        with open(directory / "documents.jsonl", "w", encoding="utf-8") as f:
            for d in self.documents:
                f.write(
                    json.dumps({"id": d.id, "title": d.title, "source": d.source, "text": d.text}, ensure_ascii=False)
                    + "\n"
                )
        if self.sparse is not None:
            self.sparse.save(directory / "bm25")
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
            "corpus_report": self.info.corpus_report,
            "build_seconds": self.info.build_seconds,
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
    ) -> Retriever:
        """Load a saved index. With embeddings, the embedding model is the one recorded in the index
        (or `embedder`: an `Embedder`, or a name / path to load); it must be the model the passages were
        embedded with (same weights and vocabulary), else `IndexMismatchError`. So must the analyzer's
        version. `method` overrides the saved default ranking."""
        from safetensors.numpy import load_file

        directory = Path(directory)
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
            dense_index = DenseIndex(arrays["embeddings"])
        elif settings.uses_dense:
            raise ValueError(f"{directory}: method {settings.method!r} needs embeddings, and this index has none")
        info = IndexInfo(
            passage_settings=PassageSettings(**manifest["passage_settings"]),
            corpus_report=manifest.get("corpus_report", {}),
            build_seconds=manifest.get("build_seconds", {}),
        )
        return cls(
            documents,
            passages,
            settings,
            analyzer=analyzer,
            sparse=sparse,
            embedder=embedder if dense_index is not None else None,
            dense=dense_index,
            info=info,
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
    if manifest.get("format_version") != INDEX_FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path}: index format version {manifest.get('format_version')!r}, "
            f"this kqa reads {INDEX_FORMAT_VERSION}: rebuild it with kqa index"
        )
    return manifest


def _read_documents(directory: Path) -> list[Document]:
    documents = []
    with open(directory / "documents.jsonl", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                documents.append(Document(id=row["id"], title=row["title"], text=row["text"], source=row["source"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{directory / 'documents.jsonl'}:{line_no}: not a document record "
                    f"({type(err).__name__}: {err}); rebuild the index with kqa index"
                ) from None
    return documents


def _passages_of(directory: Path, documents: list[Document], arrays: dict) -> list[Passage]:
    """The passages as (document, start, end) offsets, each checked to lie inside its document."""
    passages = []
    for i, (d, s, e) in enumerate(zip(arrays["doc"].tolist(), arrays["start"].tolist(), arrays["end"].tolist())):
        if not (0 <= d < len(documents) and 0 <= s < e <= len(documents[d].text)):
            raise ValueError(f"{directory}: passage {i} points outside its document (doc {d}, {s}:{e})")
        doc = documents[d]
        passages.append(Passage(index=i, doc_id=doc.id, title=doc.title, text=doc.text[s:e], start=s, end=e))
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
