"""kqa.boundaries (answer_boundaries="korean"): hand-made Korean contexts where the particle rule must
and must not move a span's edges, exact offsets into the given text (NFD included), the n-best merge of
spans that become identical, "off" leaving the post-processor as it was, and the setting reaching
QuestionAnswerer through the saved settings and an override."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

pytest.importorskip("kiwipiepy", reason="Korean answer boundaries need kiwipiepy")

from kqa.boundaries import adjust_spans  # noqa: E402
from kqa.postprocess import PostprocessConfig, SpanPrediction, decode_answers  # noqa: E402
from kqa.prediction import PredictionSettings  # noqa: E402
from kqa.text import nfc_with_alignment  # noqa: E402

KOREAN = PostprocessConfig(n_best_size=5, answer_boundaries="korean")


def character_window(context: str, spans: list[tuple[str, float]]) -> tuple[list, list, np.ndarray, np.ndarray]:
    """examples, features and logits of one window whose tokens are the context's (NFC) characters,
    offsets into `context` as given; each (answer, logit) gives the answer's first character that start
    logit and its last character that end logit (answers are found in the NFC text)."""
    nfc, origin = nfc_with_alignment(context)
    offsets = [[int(origin[i]), int(origin[i + 1])] for i in range(len(nfc))]
    start, end = np.full((1, len(nfc)), -5.0), np.full((1, len(nfc)), -5.0)
    for answer, logit in spans:
        answer = unicodedata.normalize("NFC", answer)
        s, e = nfc.index(answer), nfc.index(answer) + len(answer) - 1
        start[0, s], end[0, e] = max(start[0, s], logit), max(end[0, e], logit)
    return [{"id": "q", "context": context}], [{"example_id": "q", "offset_mapping": offsets}], start, end


def answer(context: str, span: str, config: PostprocessConfig = KOREAN):
    prediction = decode_answers(*character_window(context, [(span, 10.0)]), config)["q"]
    assert context[prediction.start : prediction.end] == prediction.text
    for s in prediction.nbest:
        assert context[s.start : s.end] == s.text and s.text
    return prediction


@pytest.mark.parametrize(
    ("context", "span", "expected"),
    [
        ("훈민정음은 1446년에 반포되었다.", "1446년에", "1446년"),  # a number and a bound noun keep 년
        ("세종대왕이 훈민정음을 창제했다.", "세종대왕이", "세종대왕"),
        ("서울에서는 비가 왔다.", "서울에서는", "서울"),  # two particles
        ("《첼시 걸즈》가 나왔다.", "《첼시 걸즈》가", "《첼시 걸즈》"),  # after a closing bracket
        ("부산, 인천, 목포가 항구 도시다.", "부산,", "부산"),
        ("그 법은 제89조에서 정한다.", "제89조에서", "제89조"),
        ("보이저 1호가 발사되었다.", "보이저 1호가", "보이저 1호"),
        ("1446년에 세종대왕이 반포했다.", "에 세종대왕", "세종대왕"),  # a leading particle and its space
    ],
)
def test_trailing_and_leading_particles_are_trimmed(context, span, expected):
    prediction = answer(context, span)
    assert prediction.text == expected
    assert prediction.start == context.index(expected) and prediction.end == prediction.start + len(expected)


@pytest.mark.parametrize(
    ("context", "span"),
    [
        ("우리는 바다를 보았다.", "바다"),  # 다 is not an ending here
        ("아이가 웃었다.", "아이"),  # nor 이 a particle
        ("나이가 많다.", "나이"),
        ("이순신이 이겼다.", "이순신"),
        ("가나는 아프리카에 있다.", "가나"),
        ("훈민정음은 1446년에 반포되었다.", "1446년"),  # number + unit
        ("인지심리학은 정신과정을 연구하는 학문이다.", "정신과정을 연구하는 학문이다"),  # gold answers end so
        ("그는 가수인 박지은이다.", "가수인"),  # an adnominal ending stays
        ("훈민정음은 1446년에 반포되었다.", "반포되었다"),  # a verb keeps its endings
        ("훈민정음은 1446년에 반포되었다.", "144"),  # the edge inside a morpheme: left alone
        ("훈민정음은 1446년에 반포되었다.", "에"),  # a particle alone is never emptied
        ("지구의 나이는 46억 년이다.", "이다"),  # the copula at the start: its ending would be left
    ],
)
def test_words_and_answers_that_end_like_particles_stay(context, span):
    assert answer(context, span).text == span


def test_korean_is_the_default_and_off_leaves_the_spans_as_they_were():
    # Rules 1-4 alone ("off") are checked against a brute-force reference in tests/test_postprocess.py.
    inputs = character_window("훈민정음은 1446년에 반포되었다.", [("1446년에", 10.0), ("훈민정음은", 9.0)])
    default = decode_answers(*inputs, PostprocessConfig(n_best_size=5))["q"]
    off = decode_answers(*inputs, PostprocessConfig(n_best_size=5, answer_boundaries="off"))["q"]
    assert PostprocessConfig().answer_boundaries == "korean" and default == decode_answers(*inputs, KOREAN)["q"]
    assert (off.text, default.text) == ("1446년에", "1446년")
    assert "훈민정음은" in [s.text for s in off.nbest] and "훈민정음" in [s.text for s in default.nbest]
    with pytest.raises(ValueError, match="answer_boundaries"):
        PostprocessConfig(answer_boundaries="english")


def test_squad2_null_answer_keeps_its_probability():
    context = "훈민정음은 1446년에 반포되었다."
    examples, features, start, end = character_window(context, [("1446년에", 2.0), ("1446년", 1.5)])
    offsets = features[0]["offset_mapping"]
    features[0] = {"example_id": "q", "cls_index": 0, "offset_mapping": [[-1, -1]] + offsets}
    start, end = (np.pad(logits, ((0, 0), (1, 0)), constant_values=3.0) for logits in (start, end))
    found = {}
    for mode in ("off", "korean"):
        config = PostprocessConfig(n_best_size=5, version_2_with_negative=True, answer_boundaries=mode)
        found[mode] = decode_answers(examples, features, start, end, config)["q"]
        assert found[mode].text == "" and found[mode].null_score == 6.0
    mass = {mode: sum(s.probability for s in found[mode].nbest) for mode in found}
    assert mass["korean"] == pytest.approx(mass["off"])
    assert found["korean"].nbest[0].text == "1446년" and found["korean"].null_odds == found["off"].null_odds


def test_nfd_context_offsets_point_into_the_given_text():
    context = unicodedata.normalize("NFD", "세종대왕이 훈민정음을 1446년에 반포했다.")
    assert len(context) > len(unicodedata.normalize("NFC", context))
    prediction = answer(context, "1446년에")
    assert prediction.text == unicodedata.normalize("NFD", "1446년")
    assert prediction.start == context.index("1446") and prediction.end == prediction.start + len(prediction.text)
    assert answer(context, unicodedata.normalize("NFD", "세종대왕이")).text == unicodedata.normalize("NFD", "세종대왕")


def test_spans_that_become_identical_merge_into_the_best():
    context = "훈민정음은 1446년에 반포되었다."
    inputs = character_window(context, [("1446년에", 10.0), ("1446년", 9.0), ("훈민정음은", 8.0)])
    off = decode_answers(*inputs, PostprocessConfig(n_best_size=5, answer_boundaries="off"))["q"]
    korean = decode_answers(*inputs, KOREAN)["q"]
    by_text = {s.text: s for s in off.nbest}
    first = korean.nbest[0]
    assert (first.text, first.score) == ("1446년", by_text["1446년에"].score)  # the best member's score
    assert (first.start_logit, first.end_logit) == (by_text["1446년에"].start_logit, by_text["1446년에"].end_logit)
    assert first.probability == pytest.approx(by_text["1446년에"].probability + by_text["1446년"].probability)
    assert [s.text for s in korean.nbest].count("1446년") == 1
    assert "훈민정음" in [s.text for s in korean.nbest]
    assert sum(s.probability for s in korean.nbest) == pytest.approx(sum(s.probability for s in off.nbest))
    scores = [s.score for s in korean.nbest]
    assert scores == sorted(scores, reverse=True) and len(korean.nbest) < len(off.nbest)
    assert (korean.text, korean.score) == ("1446년", off.score)


def test_adjust_spans_analyses_each_context_once_and_keeps_empty_lists():
    context = "세종대왕이 훈민정음을 창제했다."
    span = SpanPrediction("세종대왕이", 0, 5, 3.0, 1.0, 1.5, 1.5)
    spans, bounds = adjust_spans([span, span], [0, 1, 1, 2], [context, "빈 예제", context])
    assert bounds == [0, 1, 1, 2] and [s.text for s in spans] == ["세종대왕", "세종대왕"]
    assert span.text == "세종대왕이"  # the inputs are not changed


def test_the_setting_is_saved_and_read_back():
    settings = PredictionSettings().with_overrides(answer_boundaries="korean")
    assert PredictionSettings.from_dict(settings.to_dict()).postprocess.answer_boundaries == "korean"
    old = {"features": {}, "postprocess": {"n_best_size": 20}}  # a kqa_config.json written before the setting
    assert PredictionSettings.from_dict(old).postprocess.answer_boundaries == PostprocessConfig().answer_boundaries


def test_question_answerer_applies_the_saved_setting_and_an_override(tmp_path):
    from kqa.inference import QuestionAnswerer
    from kqa.testing import build_char_tokenizer, token_scoring_model

    context, question = "훈민정음은 1446년에 반포되었다.", "훈민정음은 언제 반포되었는가?"
    tokenizer = build_char_tokenizer([context, question])
    model = token_scoring_model(tokenizer, {"1": 8.0}, {"##에": 8.0})
    settings = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 32, "answer_boundaries": "korean"}
    model.save_pretrained(tmp_path / "model", tokenizer=tokenizer, kqa_config=settings)
    qa = QuestionAnswerer.from_pretrained(tmp_path / "model", device="cpu")
    assert qa.settings.postprocess.answer_boundaries == "korean"
    found = qa(question, context)
    assert (found.text, found.start, found.end) == ("1446년", 6, 11)
    off = QuestionAnswerer.from_pretrained(tmp_path / "model", device="cpu", answer_boundaries="off")
    assert off(question, context).text == "1446년에"
