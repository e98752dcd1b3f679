"""Answer questions with a saved kqa model: the prediction path of evaluation (`kqa.prediction`),
wrapped for raw (question, context) pairs of any length.

    qa = QuestionAnswerer.from_pretrained("outputs/kqa/best")
    qa("대한민국의 수도는 어디인가?", "대한민국의 수도는 서울이며, …")
    # Answer(text='서울', start=10, end=12, score=…, probability=…)

Backends (`kqa.inference.runtimes`, docs/inference.md): `backend="torch"` (default, `dtype=` for fp16/bf16 on
GPUs), `"torch-int8"` (dynamic int8 quantisation, CPU) and `"onnx"` (ONNX Runtime, CPU; a directory
written by `kqa export` loads with it by default). All of them run through `kqa.prediction`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from kqa.answer_ranking import AnswerRanker, load_answer_ranker
from kqa.calibration import Calibrator, load_calibrator, span_confidences
from kqa.features import prepare_eval_features
from kqa.postprocess import ExamplePrediction
from kqa.prediction import PREDICT_BATCH_SIZE, PredictionSet, PredictionSettings, load_settings, predict_answers
from kqa.text import check_text


@dataclass
class Answer:
    """A character span of the given context: `context[start:end] == text`. The null answer ("no
    answer in this context", for models trained with `version_2_with_negative`) is `text == ""`,
    `start == end == 0`, with the null score. `confidence` is the calibrated P(correct) of a span
    (`kqa.calibration`, fitted by `kqa calibrate`); None for a model without a calibrator and for the null
    answer."""

    text: str
    start: int
    end: int
    score: float
    probability: float
    confidence: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)


def examples_table(rows: Sequence[dict]):
    """Rows with id, question, context (and title) → a `datasets.Dataset` of examples without answers, in
    kqa.data's schema. Built straight from an Arrow table with a random fingerprint: `Dataset.from_list`
    would hash the rows by pickling them (~2.5 ms of a one-question call), and nothing here is cached."""
    import uuid

    import datasets
    from datasets.table import InMemoryTable

    from kqa.data import EXAMPLE_FEATURES

    table = InMemoryTable.from_pylist(
        [
            {
                "id": r["id"],
                "title": r.get("title") or "",
                "context": r["context"],
                "question": r["question"],
                "answers": {"text": [], "answer_start": []},
                "is_impossible": False,
            }
            for r in rows
        ],
        schema=EXAMPLE_FEATURES.arrow_schema,
    )
    return datasets.Dataset(
        table, info=datasets.DatasetInfo(features=EXAMPLE_FEATURES.copy()), fingerprint=uuid.uuid4().hex
    )


class QuestionAnswerer:
    """Extractive QA over contexts of any length (long contexts are split into strided windows)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        settings: PredictionSettings | None = None,
        device: str | torch.device | None = None,
        batch_size: int = PREDICT_BATCH_SIZE,
        backend: str | None = None,
        compile: bool = False,
        calibrator: Calibrator | None = None,
        answer_ranker: AnswerRanker | None = None,
    ):
        from kqa.inference.runtimes import OnnxQuestionAnsweringModel

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        on_cpu_only = isinstance(model, OnnxQuestionAnsweringModel) or backend in ("onnx", "torch-int8")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() and not on_cpu_only else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.settings = settings or PredictionSettings()
        self.batch_size = batch_size
        self.calibrator = calibrator
        # Used by retrieve-then-read only (kqa.retrieval.RetrieveAndRead): it ranks answers across passages.
        self.answer_ranker = answer_ranker
        self.backend = backend or ("onnx" if isinstance(model, OnnxQuestionAnsweringModel) else "torch")
        if self.settings.postprocess.answer_boundaries == "korean":
            from kqa.boundaries import warm_up

            warm_up()  # Kiwi loads here, not on the first question
        if compile:
            if self.backend != "torch":
                raise ValueError(f"compile=True needs the torch backend, got {self.backend!r}")
            # In place: self.model keeps its type and state_dict keys. Each new batch shape compiles once
            # (dynamic shapes after the second), so the first calls are slow.
            self.model.compile()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        backend: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        batch_size: int = PREDICT_BATCH_SIZE,
        num_threads: int | None = None,
        trust_remote_code: bool = False,
        int8_drift: str = "warn",
        compile: bool = False,
        allow_bin_weights: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        **overrides,
    ) -> QuestionAnswerer:
        """Load a kqa model directory (`best/` or `final/` of a run, or a `kqa export` directory), a
        `transformers` `*ForQuestionAnswering` directory, or either as a hub id (`org/name`, downloaded into
        the hub cache by `kqa.hub.resolve_model_dir` with `revision`, `token` (default: huggingface_hub's
        own login), `cache_dir`, `local_files_only`). `allow_bin_weights=True` reads `pytorch_model.bin`
        weights when there are no safetensors (refused otherwise: unpickling can run code).
        Feature and post-processing settings are those saved with it (kqa_config.json); flat keyword
        overrides such as `max_seq_length=512` or `n_best_size=5` replace them. `trust_remote_code` is
        needed for an encoder whose code lives beside its weights, as it was for training it.

        `backend` (see `kqa.inference.runtimes`): "torch" (default; `dtype=torch.float16` or `torch.bfloat16` casts
        the model, for GPUs; logits are decoded in float32 either way), "torch-int8" (PyTorch dynamic
        int8 quantisation of every linear layer, CPU) or "onnx" (ONNX Runtime on the CPU; the default for
        a directory holding `model.onnx`). `num_threads` sets ONNX Runtime's intra-op threads (default:
        torch's) or, for the torch backends, torch's. `int8_drift`: what to do when an int8 export's probe
        logits differ on this CPU more than where it was exported ("warn", "error" or "ignore";
        `kqa.inference.runtimes.check_int8_drift`). `compile=True` runs the torch backend's model through
        `torch.compile` (inductor): worth it for many calls on a GPU, not for a few."""
        from transformers import AutoTokenizer

        from kqa.hub import resolve_model_dir
        from kqa.inference.runtimes import check_backend, default_backend, load_model

        # At this entry a hub id becomes a directory: everything below takes the directory.
        model_dir = resolve_model_dir(
            name_or_path,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_bin=allow_bin_weights,
        )
        backend = check_backend(backend or default_backend(model_dir))
        if backend in ("onnx", "torch-int8") and device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"backend {backend!r} runs on the CPU; got device {device!r}")
        settings = load_settings(model_dir, **overrides)
        model = load_model(
            model_dir,
            backend=backend,
            dtype=dtype,
            num_threads=num_threads,
            trust_remote_code=trust_remote_code,
            int8_drift=int8_drift,
            allow_bin_weights=allow_bin_weights,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        return cls(
            model,
            tokenizer,
            settings=settings,
            device=device,
            batch_size=batch_size,
            backend=backend,
            compile=compile,
            calibrator=load_calibrator(model_dir),
            answer_ranker=load_answer_ranker(model_dir),
        )

    def __call__(
        self,
        question: Union[str, Sequence[str]],
        context: Union[str, Sequence[str]],
        *,
        top_k: int = 1,
        handle_impossible_answer: Optional[bool] = None,
        null_score_diff_threshold: Optional[float] = None,
    ):
        """One question → an `Answer` (or a list of `top_k` answers); lists of questions and contexts
        (same length, or one context for all questions) → a list of those.

        `handle_impossible_answer` (default: whether the model was trained with
        `version_2_with_negative`) lets the null answer "" compete: it is returned first when
        `null_score - best_span_score > null_score_diff_threshold` (default: the saved threshold)."""
        single = isinstance(question, str)
        if question is None or (not single and not isinstance(question, Sequence)):
            raise ValueError(f"question: expected a string or a list of strings, got {type(question).__name__}")
        questions = [question] if single else list(question)
        contexts = [context] * len(questions) if isinstance(context, str) or context is None else list(context)
        if len(contexts) != len(questions):
            raise ValueError(f"got {len(questions)} questions and {len(contexts)} contexts")
        rows = [{"id": str(i), "question": q, "context": c} for i, (q, c) in enumerate(zip(questions, contexts))]
        predictions = self.predict_rows(
            rows,
            top_k=top_k,
            handle_impossible_answer=handle_impossible_answer,
            null_score_diff_threshold=null_score_diff_threshold,
        )
        answers = [self.answers_of(predictions[r["id"]], top_k, self.calibrator) for r in rows]
        return answers[0] if single else answers

    def predict_rows(
        self,
        rows: Sequence[dict],
        *,
        top_k: int | None = None,
        handle_impossible_answer: Optional[bool] = None,
        null_score_diff_threshold: Optional[float] = None,
    ) -> dict[str, ExamplePrediction]:
        """Rows with id, question, context (e.g. a loaded SQuAD file) → predictions keyed by id."""
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        for i, row in enumerate(rows):
            where = f"row {i} (id {row.get('id')!r})"
            check_text(row.get("id"), f"{where}: 'id'")
            for key in ("question", "context"):
                if not check_text(row.get(key), f"{where}: {key!r}").strip():
                    raise ValueError(f"{where}: {key!r} is empty")
        examples = examples_table(rows)
        # Questions asked at run time are not worth a cache file each.
        features, _ = prepare_eval_features(
            examples, self.tokenizer, self.settings.features, cache=False, progress=False
        )
        settings = self._settings_for_call(top_k, handle_impossible_answer, null_score_diff_threshold)
        from kqa.dataloaders import QACollator, make_eval_dataloader, sort_by_length

        features = sort_by_length(features)  # as training's evaluation and evaluate.py batch them: same logits
        loader = make_eval_dataloader(features, QACollator.from_tokenizer(self.tokenizer), self.batch_size)
        prediction_set = PredictionSet(name="questions", examples=examples, features=features, dataloader=loader)
        predictions, _ = predict_answers(self.model, prediction_set, settings, disable_tqdm=True)
        return predictions

    def _settings_for_call(self, top_k, handle_impossible_answer, null_score_diff_threshold) -> PredictionSettings:
        """The saved settings with this call's options (None leaves a setting as saved); the n-best list
        grows to hold `top_k` answers."""
        grow_nbest = top_k if top_k is not None and top_k > self.settings.postprocess.n_best_size else None
        return self.settings.with_overrides(
            "this call",
            n_best_size=grow_nbest,
            version_2_with_negative=None if handle_impossible_answer is None else bool(handle_impossible_answer),
            null_score_diff_threshold=None if null_score_diff_threshold is None else float(null_score_diff_threshold),
        )

    def with_settings(self, source: str = "overrides", **overrides) -> QuestionAnswerer:
        """A copy that shares this one's model and tokenizer, with flat setting overrides
        (`max_seq_length=512`, `answer_boundaries="off"`, …) applied to a copy of the settings: this
        answerer keeps its own. Cheap enough to make per call."""
        other = copy.copy(self)
        other.settings = self.settings.with_overrides(source, **overrides)
        return other

    def confidences(self, prediction: ExamplePrediction) -> list[Optional[float]]:
        """The calibrated P(correct) of each n-best span (None each without a calibrator)."""
        return span_confidences(prediction, self.calibrator)

    @staticmethod
    def answers_of(prediction: ExamplePrediction, top_k: int, calibrator: Calibrator | None = None):
        """One prediction as `Answer`s: the best (top_k=1) or the first `top_k` by score, the null
        answer among them when the prediction carries a null score; with a `calibrator`, each span's
        confidence."""
        confidence = span_confidences(prediction, calibrator)
        answers = [
            Answer(s.text, s.start, s.end, float(s.score), float(s.probability), c)
            for s, c in zip(prediction.nbest, confidence)
        ]
        if prediction.null_score is not None:
            # The null answer's probability is the softmax mass the n-best spans leave.
            null = Answer("", 0, 0, float(prediction.null_score), max(0.0, 1.0 - sum(a.probability for a in answers)))
            if not answers or prediction.text == "":  # the null answer won
                answers.insert(0, null)
            else:  # it ranks by score below the winning span
                position = 1 + sum(a.score >= null.score for a in answers[1:])
                answers.insert(position, null)
        if not answers:
            answers = [Answer("", 0, 0, -math.inf, 0.0)]
        return answers[0] if top_k == 1 else answers[:top_k]
