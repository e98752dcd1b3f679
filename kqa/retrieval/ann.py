"""Approximate nearest-neighbour search of passage embeddings: a FAISS HNSW graph over unit vectors.

`DenseIndex` searches exactly (numpy) below `DEFAULT_ANN_THRESHOLD` passages and through an `HnswIndex`
above it (`AnnSettings.mode`: "auto" by that threshold, "on", "off"). The graph is built from the
stored embeddings, so an index can always rebuild it; the vectors themselves live once, in the graph's
flat storage, which `DenseIndex.embeddings` views without a copy.

On disk the graph is `dense.hnsw` (faiss.write_index with IO_FLAG_SKIP_STORAGE: links only, the vectors
are already in passages.safetensors) beside the other files of the index; no pickle.

The defaults below are measured by benchmarks/bench_ann.py (docs/benchmarks.md, "Approximate dense
search"): recall@10 against exact search and query latency on e5-like vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ANN_MODES = ("auto", "on", "off")
# Exact search of one query adds ~16 ms at 180k passages and ~50 ms at 1M on two cores (docs/retrieval.md,
# "Scaling"): from about 200k it passes tens of ms, and the graph pays; below it exact search is fast and exact.
# benchmarks/bench_ann.py prints exact latency by size ("Exact search alone") to re-check this on a machine.
DEFAULT_ANN_THRESHOLD = 200_000
# HNSW links per node: 32 is the common choice for 384-d text embeddings; 1M passages cost 32*2*4 B =
# 256 B/vector of links on top of the 1,536 B of the vector (1.7 GiB in all, within a 4 GiB budget).
# bench_ann.py measures recall@10 and latency for efSearch 16..256 with these (docs/benchmarks.md).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200  # build-time beam: a better graph for a slower build (the usual faiss choice)
# Query-time beam: recall@10 vs latency. Measured on 10^6 e5-like passages with 200 real questions
# (benchmarks/bench_index_scale.py, docs/benchmarks.md): 128 -> 0.961 (0.43 ms), 256 -> 0.985 (0.66 ms),
# 512 -> 0.991 (1.16 ms); 256 is the smallest that keeps recall@10 >= 0.98 there. tests/test_ann.py checks
# recall 1.0 at 512 on clustered vectors.
HNSW_EF_SEARCH = 256
# A filter letting through fewer than this share of the passages is searched exactly over the allowed
# ones (cost proportional to their number); above it the graph skips the disallowed ones as it walks.
EXACT_BELOW_ALLOWED_FRACTION = 0.05
ANN_FILE = "dense.hnsw"


@dataclass(frozen=True)
class AnnSettings:
    """When `DenseIndex` uses a graph ("auto": from `threshold` passages on) and the graph's parameters."""

    mode: str = "auto"
    threshold: int = DEFAULT_ANN_THRESHOLD
    m: int = HNSW_M
    ef_construction: int = HNSW_EF_CONSTRUCTION
    ef_search: int = HNSW_EF_SEARCH

    def __post_init__(self):
        if self.mode not in ANN_MODES:
            raise ValueError(f"ann mode must be one of {ANN_MODES}, got {self.mode!r}")
        for name in ("threshold", "m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ann {name} must be a positive int, got {value!r}")

    def wants_graph(self, num_passages: int) -> bool:
        return self.mode == "on" or (self.mode == "auto" and num_passages >= self.threshold)

    def graph_parameters(self) -> dict:
        return {"kind": "hnsw", "metric": "inner_product", **{k: v for k, v in asdict(self).items() if k != "mode"}}


def _faiss():
    from kqa.extras import require

    require("retrieval", "faiss")
    import faiss

    return faiss


class HnswIndex:
    """A FAISS IndexHNSWFlat with inner product over unit vectors (= cosine)."""

    def __init__(self, index, settings: AnnSettings):
        self.index = index
        self.settings = settings

    @classmethod
    def build(cls, embeddings: np.ndarray, settings: AnnSettings) -> HnswIndex:
        """Cost: roughly n·log(n)·efConstruction distance computations — minutes per million vectors
        on two cores (docs/benchmarks.md). `add` extends a built graph at the same cost per vector."""
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(embeddings.shape[1], settings.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
        graph = cls(index, settings)
        graph.add(embeddings)
        return graph

    def add(self, embeddings: np.ndarray) -> None:
        """Append vectors (ids continue from `num_passages`): an incremental update adds its new passages
        without rebuilding; removing passages needs a rebuild (HNSW has no cheap delete)."""
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))

    @property
    def num_passages(self) -> int:
        return int(self.index.ntotal)

    def vectors(self) -> np.ndarray:
        """The stored vectors [n, d], a view of the graph's flat storage (no copy)."""
        faiss = _faiss()
        n, d = self.index.ntotal, self.index.d
        storage = faiss.downcast_index(self.index.storage)
        return faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d)

    def nbytes(self) -> int:
        """Memory of the index: the vectors plus the graph's links and levels."""
        hnsw = self.index.hnsw
        links = hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
        return int(self.index.ntotal) * int(self.index.d) * 4 + int(links)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices [q, k], scores [q, k]) best first; -1 / -inf where fewer than k were found."""
        faiss = _faiss()
        ef = max(self.settings.ef_search, k)
        if allowed is None:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            return self._search(self.index, queries, k, params)
        bitmap = np.packbits(allowed, bitorder="little")  # faiss reads bit i of byte i // 8, low bit first
        selector = faiss.IDSelectorBitmap(allowed.shape[0], faiss.swig_ptr(bitmap))
        return self._search(self.index, queries, k, faiss.SearchParametersHNSW(sel=selector, efSearch=ef))

    def exact_search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search of the graph's flat storage; the passages `allowed` leaves out are never scored."""
        faiss = _faiss()
        storage = faiss.downcast_index(self.index.storage)
        if allowed is None:
            return self._search(storage, queries, k, None)
        bitmap = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(allowed.shape[0], faiss.swig_ptr(bitmap))
        return self._search(storage, queries, k, faiss.SearchParameters(sel=selector))

    @staticmethod
    def _search(index, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        scores, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
        scores[indices < 0] = -np.inf
        return indices.astype(np.int64), scores

    def save(self, path: Path) -> None:
        faiss = _faiss()
        faiss.write_index(self.index, str(path), faiss.IO_FLAG_SKIP_STORAGE)

    @classmethod
    def load(cls, path: Path, embeddings: np.ndarray, settings: AnnSettings) -> HnswIndex:
        """The saved links, with `embeddings` (the passages' vectors, in the index's order) as storage."""
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_STORAGE)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a readable HNSW index ({str(err).splitlines()[0]})") from None
        if not isinstance(index, faiss.IndexHNSW) or index.ntotal != embeddings.shape[0]:
            raise ValueError(
                f"{path}: an HNSW index of {index.ntotal} vectors was expected to match the "
                f"{embeddings.shape[0]} passage embeddings; rebuild the index with kqa index"
            )
        storage = faiss.IndexFlatIP(embeddings.shape[1])
        storage.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        index.storage = storage
        index.own_fields = True
        storage.this.disown()  # the HNSW index frees it
        index.hnsw.efSearch = settings.ef_search
        return cls(index, settings)
