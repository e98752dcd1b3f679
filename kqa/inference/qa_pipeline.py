"""The call of the `question-answering` pipeline of transformers 4 (removed in transformers 5), answered
by `QuestionAnswerer`: the same argument names, defaults and output shape.

    qa = kqa.pipeline("question-answering", model="outputs/kqa/best", device=-1)
    qa(question="대한민국의 수도는 어디인가?", context="대한민국의 수도는 서울이며, …")
    # {'score': 0.93, 'start': 10, 'end': 12, 'answer': '서울'}

Each argument maps onto a kqa setting (docs/migrating.md has the table and the differences):
`max_seq_len` → `max_seq_length`, `doc_stride` → `doc_stride` (both count the tokens two windows share),
`max_question_len` → `max_query_length`, `max_answer_len` → `max_answer_length` (both in tokens,
end - start + 1), `handle_impossible_answer` → the null answer competes, `align_to_words` →
`answer_boundaries` ("korean" for True, "off" for False). The pipeline's defaults apply, not the
settings saved with the model; the per-call settings go to a copy (`QuestionAnswerer.with_settings`).
`score` is the answer's probability (`Answer.probability`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from kqa.inference.answerer import Answer, QuestionAnswerer

TASK = "question-answering"
# Where the pipeline derived a default from another setting, these were its bounds.
MAX_SEQ_LEN = 384
"""max_seq_len when not given: min(tokenizer.model_max_length, MAX_SEQ_LEN)."""
DOC_STRIDE = 128
"""doc_stride when not given: min(max_seq_len // 2, DOC_STRIDE), lowered further if a window would
otherwise have no room to advance (kqa reserves max_question_len tokens for the question)."""
ANSWER_BOUNDARIES = {True: "korean", False: "off"}
"""align_to_words → `PostprocessConfig.answer_boundaries`."""
_LOWEST = {"top_k": 1, "doc_stride": 0, "max_answer_len": 1, "max_seq_len": 1, "max_question_len": 1}
_DERIVED = ("doc_stride", "max_seq_len")  # None: derived from the other settings, as the pipeline did


@dataclass(frozen=True)
class PipelineOptions:
    """The keyword arguments of the pipeline's call, with the pipeline's defaults."""

    top_k: int = 1
    doc_stride: Optional[int] = None
    max_answer_len: int = 15
    max_seq_len: Optional[int] = None
    max_question_len: int = 64
    handle_impossible_answer: bool = False
    align_to_words: bool = True

    def __post_init__(self) -> None:
        for name, lowest in _LOWEST.items():
            value = getattr(self, name)
            if value is None and name in _DERIVED:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ValueError(f"{name} must be an int >= {lowest}, got {value!r}")
        for name in ("handle_impossible_answer", "align_to_words"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> PipelineOptions:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(
                f"QuestionAnsweringPipeline got unexpected keyword argument(s) {unknown}; "
                f"it takes question, context, {', '.join(names)}"
            )
        return cls(**kwargs)

    def settings(self, tokenizer) -> dict[str, Any]:
        """The flat kqa settings (`PredictionSettings.with_overrides`) these options stand for."""
        max_seq_len = self.max_seq_len
        if max_seq_len is None:
            max_seq_len = min(tokenizer.model_max_length, MAX_SEQ_LEN)
        doc_stride = self.doc_stride
        if doc_stride is None:
            room = max_seq_len - self.max_question_len - tokenizer.num_special_tokens_to_add(pair=True)
            doc_stride = max(0, min(max_seq_len // 2, DOC_STRIDE, room - 1))
        return {
            "max_seq_length": max_seq_len,
            "doc_stride": doc_stride,
            "max_query_length": self.max_question_len,
            "max_answer_length": self.max_answer_len,
            "answer_boundaries": ANSWER_BOUNDARIES[self.align_to_words],
        }


class QuestionAnsweringPipeline:
    """`QuestionAnswerer` behind the transformers 4 question-answering pipeline's call."""

    task = TASK

    def __init__(self, answerer: QuestionAnswerer):
        if not isinstance(answerer, QuestionAnswerer):
            raise TypeError(f"expected a QuestionAnswerer, got {type(answerer).__name__}")
        self.answerer = answerer

    @classmethod
    def from_pretrained(cls, model, **kwargs) -> QuestionAnsweringPipeline:
        """Every keyword goes to `QuestionAnswerer.from_pretrained` (device, backend, dtype, batch_size, …)."""
        return cls(QuestionAnswerer.from_pretrained(model, **kwargs))

    @property
    def model(self):
        return self.answerer.model

    @property
    def tokenizer(self):
        return self.answerer.tokenizer

    @property
    def device(self):
        return self.answerer.device

    def __call__(self, *inputs, question=None, context=None, **kwargs):
        """question=, context= (strings, or a list of questions with one context or a list of contexts),
        or positionally a {"question", "context"} dict, a list of them, or two strings. Returns
        {"score", "start", "end", "answer"} per question (a list of `top_k` of them when top_k > 1),
        and a list of those for a list of questions."""
        options = PipelineOptions.from_kwargs(kwargs)
        questions, contexts, single = _inputs(inputs, question, context)
        answerer = self.answerer.with_settings("pipeline call", **options.settings(self.tokenizer))
        answers = answerer(
            questions, contexts, top_k=options.top_k, handle_impossible_answer=options.handle_impossible_answer
        )
        results = [_result(a) if isinstance(a, Answer) else [_result(x) for x in a] for a in answers]
        return results[0] if single else results


def _result(answer: Answer) -> dict[str, Any]:
    """The pipeline's answer dict: `score` is the probability."""
    return {
        "score": float(answer.probability),
        "start": int(answer.start),
        "end": int(answer.end),
        "answer": answer.text,
    }


def _inputs(inputs: tuple, question, context) -> tuple[list[str], list[str], bool]:
    """(questions, contexts, whether one question was asked) from any of the pipeline's input forms."""
    if inputs and (question is not None or context is not None):
        raise TypeError("give the inputs positionally or as question= and context=, not both")
    if len(inputs) == 2 and all(isinstance(x, str) for x in inputs):
        question, context = inputs
    elif inputs:
        return _dict_inputs(inputs)
    if question is None or context is None:
        raise TypeError("both question= and context= are needed")
    if isinstance(question, str):
        if not isinstance(context, str):
            raise ValueError(f"one question takes one context string, got {type(context).__name__}")
        return [question], [context], True
    if not isinstance(question, Sequence):
        raise ValueError(f"question: expected a string or a list of strings, got {type(question).__name__}")
    contexts = [context] * len(question) if isinstance(context, str) else list(context)
    if len(contexts) != len(question):
        raise ValueError(f"got {len(question)} questions and {len(contexts)} contexts")
    return list(question), contexts, False


def _dict_inputs(inputs: tuple) -> tuple[list[str], list[str], bool]:
    """One {"question", "context"} dict (single), or a list of them."""
    if len(inputs) != 1:
        raise TypeError(f"expected one positional input (a dict or a list of dicts), got {len(inputs)}")
    single = isinstance(inputs[0], Mapping)
    items = [inputs[0]] if single else inputs[0]
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise TypeError(f"expected a {{'question', 'context'}} dict or a list of them, got {type(items).__name__}")
    for i, item in enumerate(items):
        missing = [k for k in ("question", "context") if not isinstance(item, Mapping) or k not in item]
        if missing:
            raise ValueError(f"input {i}: expected a dict with 'question' and 'context', missing {missing}")
    return [item["question"] for item in items], [item["context"] for item in items], single


def pipeline(task: str = TASK, model=None, *, device=None, **kwargs) -> QuestionAnsweringPipeline:
    """`transformers.pipeline("question-answering", model=…, device=…)` for kqa models. `model`: what
    `QuestionAnswerer.from_pretrained` loads, or a `QuestionAnswerer`. `device`: as transformers took it
    (-1 for the CPU, a GPU index, or a device string / torch.device; none: the GPU when there is one).
    Other keywords go to `QuestionAnswerer.from_pretrained` unchanged."""
    if task != TASK:
        raise ValueError(f"kqa answers the {TASK!r} task only, got {task!r}")
    if model is None:
        raise ValueError("model= is needed: a kqa model directory (or what QuestionAnswerer.from_pretrained loads)")
    if isinstance(model, QuestionAnswerer):
        if device is not None or kwargs:
            raise TypeError("a QuestionAnswerer is already loaded: device= and loading keywords do not apply")
        return QuestionAnsweringPipeline(model)
    if device is not None:
        kwargs["device"] = _device(device)
    return QuestionAnsweringPipeline.from_pretrained(model, **kwargs)


def _device(device):
    """transformers' device numbers: a negative one (-1) is the CPU, n >= 0 the n-th GPU; anything else as given."""
    if isinstance(device, bool):
        raise TypeError(f"device must be an int, a string or a torch.device, got {device!r}")
    if isinstance(device, int):
        return "cpu" if device < 0 else f"cuda:{device}"
    return device
