"""Answer questions with a saved kqa model: the same feature builder, model and post-processor as in
evaluation, wrapped for raw (question, context) pairs of any length.

    qa = QuestionAnswerer.from_pretrained("outputs/kqa/best")
    qa("대한민국의 수도는 어디인가?", "대한민국의 수도는 서울이며, …")
    # Answer(text='서울', start=10, end=12, score=…, probability=…)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from kqa.features import FeatureConfig, prepare_eval_features
from kqa.postprocess import ExamplePrediction, PostprocessConfig, postprocess_predictions


@dataclass
class Answer:
    """A character span of the given context: `context[start:end] == text`."""

    text: str
    start: int
    end: int
    score: float
    probability: float

    def to_dict(self) -> dict:
        return asdict(self)


class QuestionAnswerer:
    """Extractive QA over contexts of any length (long contexts are split into strided windows)."""

    def __init__(self, model, tokenizer, *, feature_config: FeatureConfig | None = None,
                 post_config: PostprocessConfig | None = None, device: str | torch.device | None = None,
                 batch_size: int = 32):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.feature_config = feature_config or FeatureConfig()
        self.post_config = post_config or PostprocessConfig()
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, device: str | torch.device | None = None,
                        batch_size: int = 32, **overrides) -> "QuestionAnswerer":
        """Load a kqa model directory; feature/post-processing settings come from its kqa_config.json
        unless overridden (max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length)."""
        from transformers import AutoTokenizer

        from kqa.modeling import QuestionAnsweringModel, load_kqa_config

        saved = {**load_kqa_config(model_dir), **{k: v for k, v in overrides.items() if v is not None}}
        feature_config = FeatureConfig(
            max_seq_length=saved.get("max_seq_length", 384),
            doc_stride=saved.get("doc_stride", 128),
            max_query_length=saved.get("max_query_length", 64),
        )
        post_config = PostprocessConfig(
            n_best_size=saved.get("n_best_size", 20),
            max_answer_length=saved.get("max_answer_length", 30),
            version_2_with_negative=saved.get("version_2_with_negative", False),
            null_score_diff_threshold=saved.get("null_score_diff_threshold", 0.0),
        )
        model = QuestionAnsweringModel.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        return cls(model, tokenizer, feature_config=feature_config, post_config=post_config, device=device,
                   batch_size=batch_size)

    def __call__(self, question: Union[str, Sequence[str]], context: Union[str, Sequence[str]], *,
                 top_k: int = 1):
        """One question → an `Answer` (or a list of `top_k` answers); lists of questions and contexts
        (same length, or one context for all questions) → a list of those."""
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        contexts = [context] * len(questions) if isinstance(context, str) else list(context)
        if len(contexts) != len(questions):
            raise ValueError(f"got {len(questions)} questions and {len(contexts)} contexts")
        rows = [{"id": str(i), "question": q, "context": c} for i, (q, c) in enumerate(zip(questions, contexts))]
        predictions = self.predict_rows(rows, top_k=top_k)
        answers = [self._to_answers(predictions[r["id"]], top_k) for r in rows]
        return answers[0] if single else answers

    def predict_rows(self, rows: Sequence[dict], *, top_k: int | None = None) -> dict[str, ExamplePrediction]:
        """Rows with id, question, context (e.g. a loaded SQuAD file) → predictions keyed by id."""
        import datasets

        for i, row in enumerate(rows):
            for key in ("id", "question", "context"):
                if not isinstance(row.get(key), str) or (key != "id" and not row[key].strip()):
                    raise ValueError(f"row {i} (id {row.get('id')!r}): {key!r} must be a non-empty string")
        examples = datasets.Dataset.from_list([
            {"id": r["id"], "title": r.get("title", ""), "question": r["question"], "context": r["context"],
             "answers": {"text": [], "answer_start": []}, "is_impossible": False}
            for r in rows
        ])
        # Questions asked at run time are not worth a cache file each.
        features, _ = prepare_eval_features(examples, self.tokenizer, self.feature_config, cache=False)
        start_logits, end_logits = self._logits(features)
        post_config = self.post_config
        if top_k is not None and top_k > post_config.n_best_size:
            post_config = PostprocessConfig(**{**asdict(post_config), "n_best_size": top_k})
        return postprocess_predictions(examples, features, start_logits, end_logits, post_config)

    @torch.no_grad()
    def _logits(self, features) -> tuple[np.ndarray, np.ndarray]:
        """Model logits for every feature, padded to the longest feature (padding never wins: the
        post-processor only looks at context tokens)."""
        from kqa.dataloaders import QACollator, make_eval_dataloader

        loader = make_eval_dataloader(features, QACollator.from_tokenizer(self.tokenizer), self.batch_size)
        width = max(len(ids) for ids in features["input_ids"])
        starts = np.full((len(features), width), -1e4, dtype=np.float32)
        ends = np.full((len(features), width), -1e4, dtype=np.float32)
        row = 0
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            out = self.model(**batch)
            n, length = out.start_logits.shape
            starts[row:row + n, :length] = out.start_logits.float().cpu().numpy()
            ends[row:row + n, :length] = out.end_logits.float().cpu().numpy()
            row += n
        return starts, ends

    @staticmethod
    def _to_answers(prediction: ExamplePrediction, top_k: int):
        answers = [Answer(s.text, s.start, s.end, float(s.score), float(s.probability)) for s in prediction.nbest]
        if not answers:
            answers = [Answer("", 0, 0, float("-inf"), 0.0)]
        return answers[0] if top_k == 1 else answers[:top_k]
