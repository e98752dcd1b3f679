"""Open-domain QA over a user's own documents: split them into passages, retrieve the passages a
question needs (BM25 over Korean morphemes, e5 embeddings, or both fused), then read them with a
`QuestionAnswerer`. See docs/retrieval.md.

    from kqa.retrieval import Embedder, RetrieveAndRead, Retriever, load_corpus
"""

from __future__ import annotations

from kqa.retrieval.corpus import (
    CorpusError,
    CorpusReport,
    Document,
    Passage,
    PassageSettings,
    load_corpus,
    split_corpus,
    split_passages,
)
from kqa.retrieval.dense import DenseIndex, Embedder, EmbedderSettings
from kqa.retrieval.filters import FilterError, MetadataFilter, parse_filters
from kqa.retrieval.fusion import reciprocal_rank_fusion, score_fusion
from kqa.retrieval.pipeline import OpenAnswer, OpenResult, RetrieveAndRead
from kqa.retrieval.retriever import IndexMismatchError, RetrievedPassage, Retriever, RetrieverSettings
from kqa.retrieval.sparse import BM25Index, CharBigramAnalyzer, MorphemeAnalyzer

__all__ = [
    "BM25Index",
    "CharBigramAnalyzer",
    "CorpusError",
    "CorpusReport",
    "DenseIndex",
    "Document",
    "Embedder",
    "EmbedderSettings",
    "FilterError",
    "IndexMismatchError",
    "MetadataFilter",
    "MorphemeAnalyzer",
    "OpenAnswer",
    "OpenResult",
    "Passage",
    "PassageSettings",
    "RetrieveAndRead",
    "RetrievedPassage",
    "Retriever",
    "RetrieverSettings",
    "load_corpus",
    "parse_filters",
    "reciprocal_rank_fusion",
    "score_fusion",
    "split_corpus",
    "split_passages",
]
