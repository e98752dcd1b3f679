"""`kqa.pipeline("question-answering", …)`: the transformers 4 pipeline's call and output shape over
`QuestionAnswerer`, on models whose answers are known by construction (`token_scoring_model`: the start
and end logits of each token are set by hand, so the best span is certain)."""

from __future__ import annotations

import pytest

import kqa
from kqa.features import FeatureConfig, prepare_eval_features
from kqa.inference import QuestionAnswerer, QuestionAnsweringPipeline
from kqa.testing import KOREAN_EXAMPLES, token_scoring_model

CAPITAL = KOREAN_EXAMPLES[0]  # "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다. 서울특별시는 …"
QUESTION, CONTEXT = CAPITAL["question"], CAPITAL["context"]
MARK = 8.0  # the logit of a marked token; every other token's logit is 0
NULL = 10.0  # the CLS token's logits in the null-answer model: its null score beats the marked span's
BUSAN = CONTEXT.index("부산")
# From 서울 to 부산: 15 tokens of the character tokenizer (checked in the test that uses it).
LONG_SPAN = CONTEXT[CONTEXT.index("서울") : BUSAN + 2]
KEYS = ["score", "start", "end", "answer"]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def marked_pipeline(tokenizer, starts: dict, ends: dict) -> QuestionAnsweringPipeline:
    model = token_scoring_model(tokenizer, starts, ends)
    return kqa.pipeline("question-answering", model=QuestionAnswerer(model, tokenizer, device="cpu"))


@pytest.fixture(scope="module")
def busan(tokenizer):
    """Answers 부산 (「부」 … 「##산」) wherever it occurs."""
    return marked_pipeline(tokenizer, {"부": MARK}, {"##산": MARK})


@pytest.fixture(scope="module")
def long_span(tokenizer):
    """Answers LONG_SPAN: a start mark on 「서」, an end mark on 「##산」."""
    return marked_pipeline(tokenizer, {"서": MARK}, {"##산": MARK})


def test_the_answer_is_a_dict_with_the_pipelines_keys_and_types(busan):
    result = busan(question=QUESTION, context=CONTEXT)
    assert list(result) == KEYS
    assert [type(result[k]) for k in KEYS] == [float, int, int, str]
    assert (result["answer"], result["start"], result["end"]) == ("부산", BUSAN, BUSAN + 2)
    assert CONTEXT[result["start"] : result["end"]] == result["answer"]
    assert 0.5 < result["score"] <= 1.0  # a probability: the marked span takes almost all of it


def test_top_k_gives_a_list_best_first(busan):
    results = busan(question=QUESTION, context=CONTEXT, top_k=3)
    assert isinstance(results, list) and len(results) == 3
    assert results[0] == busan(question=QUESTION, context=CONTEXT)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-9
    assert len({(r["start"], r["end"]) for r in results}) == 3
    for r in results:
        assert list(r) == KEYS and CONTEXT[r["start"] : r["end"]] == r["answer"]


def test_several_questions_give_a_list_with_one_result_per_question(busan):
    other = KOREAN_EXAMPLES[1]
    one_context = busan(question=[QUESTION, other["question"]], context=CONTEXT)
    assert [r["answer"] for r in one_context] == ["부산", "부산"]
    paired = busan(question=[QUESTION, other["question"]], context=[CONTEXT, other["context"]], top_k=2)
    assert [len(r) for r in paired] == [2, 2] and all(isinstance(x, dict) for r in paired for x in r)
    assert [r[0]["answer"] for r in paired] == ["부산", "부산"]
    assert busan(question=[QUESTION], context=[CONTEXT]) == [busan(question=QUESTION, context=CONTEXT)]


def test_the_dict_and_positional_forms_answer_like_the_keywords(busan):
    expected = busan(question=QUESTION, context=CONTEXT)
    item = {"question": QUESTION, "context": CONTEXT}
    assert busan(item) == expected
    assert busan([item, item]) == [expected, expected]
    assert busan(QUESTION, CONTEXT) == expected
    assert busan(item, top_k=2)[0] == expected


def test_handle_impossible_answer_returns_the_pipelines_null_answer(tokenizer):
    null_model = marked_pipeline(tokenizer, {"부": MARK, "[CLS]": NULL}, {"##산": MARK, "[CLS]": NULL})
    assert null_model(question=QUESTION, context=CONTEXT)["answer"] == "부산"  # False by default
    null = null_model(question=QUESTION, context=CONTEXT, handle_impossible_answer=True)
    assert list(null) == KEYS and (null["start"], null["end"], null["answer"]) == (0, 0, "")
    assert 0.5 < null["score"] < 1.0
    both = null_model(question=QUESTION, context=CONTEXT, handle_impossible_answer=True, top_k=2)
    assert [r["answer"] for r in both] == ["", "부산"] and both[0]["score"] > both[1]["score"]


def test_max_answer_len_counts_tokens_and_limits_the_span(long_span, tokenizer):
    length = len(tokenizer(LONG_SPAN, add_special_tokens=False)["input_ids"])
    assert length == 15
    assert long_span(question=QUESTION, context=CONTEXT, max_answer_len=length)["answer"] == LONG_SPAN
    shorter = long_span(question=QUESTION, context=CONTEXT, max_answer_len=length - 1)
    assert shorter["answer"] != LONG_SPAN
    assert len(tokenizer(shorter["answer"], add_special_tokens=False)["input_ids"]) <= length - 1


def test_align_to_words_chooses_the_korean_answer_boundaries(tokenizer):
    particle = marked_pipeline(tokenizer, {"부": MARK}, {"##이": MARK})  # the model ends on 부산「이」다
    assert particle(question=QUESTION, context=CONTEXT)["answer"] == "부산"  # True: off the copula
    raw = particle(question=QUESTION, context=CONTEXT, align_to_words=False)
    assert (raw["answer"], raw["start"], raw["end"]) == ("부산이", BUSAN, BUSAN + 3)


def _long_context() -> tuple[str, int]:
    """The capital passage after several others (none holds 부 or 산): the context and where 부산 is."""
    before = " ".join(ex["context"] for ex in KOREAN_EXAMPLES[2:]) + " "
    return before + CONTEXT, len(before) + BUSAN


def _windows_scored(pipe, **options) -> tuple[dict, list[list[int]]]:
    """The result of one call on the long context, and the unpadded token ids of every window the model saw."""
    seen: list[list[int]] = []

    def record(module, args, kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            seen.append(ids[: sum(mask)])

    hook = pipe.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        return pipe(question=QUESTION, context=_long_context()[0], **options), seen
    finally:
        hook.remove()


@pytest.mark.parametrize(
    "options, geometry",
    [
        (dict(max_seq_len=64, doc_stride=16, max_question_len=16), FeatureConfig(64, 16, 16)),
        # doc_stride not given: min(max_seq_len // 2, 128), lowered to leave a full-length question room
        (dict(max_seq_len=64, max_question_len=16), FeatureConfig(64, 32, 16)),
        (dict(max_seq_len=128), FeatureConfig(128, 128 - 64 - 3 - 1, 64)),
    ],
)
def test_doc_stride_max_seq_len_and_max_question_len_shape_the_windows(busan, options, geometry):
    import datasets

    context, start = _long_context()
    result, seen = _windows_scored(busan, **options)
    assert (result["answer"], result["start"], result["end"]) == ("부산", start, start + 2)
    expected, _ = prepare_eval_features(
        datasets.Dataset.from_list([{"id": "0", "question": QUESTION, "context": context}]),
        busan.tokenizer,
        geometry,
        cache=False,
    )
    assert len(expected) > 1
    assert sorted(seen) == sorted(expected["input_ids"])
    _, default_windows = _windows_scored(busan)  # the pipeline's 384 tokens hold this context whole
    assert len(default_windows) == 1 < len(seen)


def test_per_call_settings_do_not_persist(long_span):
    before = long_span.answerer.settings
    options = dict(max_answer_len=3, align_to_words=False, max_seq_len=64, doc_stride=8, max_question_len=8)
    assert long_span(question=QUESTION, context=CONTEXT, **options)["answer"] != LONG_SPAN
    assert long_span.answerer.settings is before
    assert long_span(question=QUESTION, context=CONTEXT)["answer"] == LONG_SPAN


def test_the_pipelines_defaults_apply_not_the_saved_settings(tokenizer, tmp_path):
    model = token_scoring_model(tokenizer, {"서": MARK}, {"##산": MARK})
    saved = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
    model.save_pretrained(tmp_path / "model", tokenizer=tokenizer, kqa_config=saved)
    pipe = kqa.pipeline("question-answering", model=tmp_path / "model", device=-1)
    assert str(pipe.device) == "cpu"
    assert pipe.answerer.settings.postprocess.max_answer_length == 10  # loaded as saved ...
    assert pipe(question=QUESTION, context=CONTEXT)["answer"] == LONG_SPAN  # ... but the call uses 15 tokens
    assert kqa.pipeline(model=tmp_path / "model", batch_size=4).answerer.batch_size == 4  # loading keywords pass


@pytest.mark.parametrize("name", ["topk", "padding", "max_seq_length", "null_score_diff_threshold"])
def test_an_unknown_keyword_is_a_type_error_naming_it(busan, name):
    with pytest.raises(TypeError, match=f"'{name}'"):
        busan(question=QUESTION, context=CONTEXT, **{name: 1})


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(top_k=0), ValueError, "top_k must be an int >= 1"),
        (dict(max_answer_len=0), ValueError, "max_answer_len"),
        (dict(doc_stride=-1), ValueError, "doc_stride"),
        (dict(align_to_words="yes"), TypeError, "align_to_words must be True or False"),
        (dict(max_seq_len=64, doc_stride=60, max_question_len=16), ValueError, "doc_stride .60. must be smaller"),
    ],
)
def test_bad_values_are_rejected(busan, kwargs, error, message):
    with pytest.raises(error, match=message):
        busan(question=QUESTION, context=CONTEXT, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((), dict(question=QUESTION, context=[CONTEXT]), "one question takes one context"),
        ((), dict(question=[QUESTION, QUESTION], context=[CONTEXT]), "2 questions and 1 contexts"),
        (({"question": QUESTION},), {}, r"input 0: .*missing \['context'\]"),
        (({"question": QUESTION, "context": CONTEXT},), dict(question=QUESTION), "not both"),
        ((), dict(question=QUESTION), "both question= and context="),
        (({"question": QUESTION, "context": ""},), {}, "'context' is empty"),
    ],
)
def test_bad_inputs_are_rejected_with_the_reason(busan, args, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        busan(*args, **kwargs)


def test_pipeline_refuses_other_tasks_and_a_missing_model(busan):
    with pytest.raises(ValueError, match="'question-answering' task only"):
        kqa.pipeline("text-classification", model=busan.answerer)
    with pytest.raises(ValueError, match="model= is needed"):
        kqa.pipeline("question-answering")
    with pytest.raises(TypeError, match="already loaded"):
        kqa.pipeline(model=busan.answerer, device="cpu")
