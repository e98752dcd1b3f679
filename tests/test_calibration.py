"""Calibrated confidence (`kqa.calibration`, `kqa calibrate`) and abstention over documents
(`RetrieveAndRead` with a calibrated reader): synthetic scores whose right calibration is known, a tiny
hand-set model end to end, and hand-set logits whose ranking is certain."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kqa.calibration import (
    CALIBRATION_BINS,
    Calibrator,
    ContextScores,
    check_threshold,
    expected_calibration_error,
    fit_calibrator,
    fit_logistic,
    load_calibrator,
    reliability_table,
    save_calibrator,
    within_context_softmax,
)
from kqa.testing import build_char_tokenizer, token_scoring_model

ROOT = Path(__file__).resolve().parents[1]


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ---- the calibrator on synthetic scores ---------------------------------------------------------


def test_logistic_fit_recovers_the_generating_logistic():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, size=(40_000, 2))
    y = rng.random(40_000) < sigmoid(0.8 * x[:, 0] - 0.3 * x[:, 1] - 1.5)
    weights, bias = fit_logistic(x, y)
    assert weights == pytest.approx([0.8, -0.3], abs=0.04) and bias == pytest.approx(-1.5, abs=0.06)


def test_platt_on_the_span_score_recovers_it_and_is_calibrated():
    rng = np.random.default_rng(1)
    scores = rng.normal(8, 4, size=20_000)
    correct = rng.random(20_000) < sigmoid(0.5 * scores - 4.0)
    contexts = [ContextScores([s, s - 3], [0.9, 0.1]) for s in scores]
    calibrator = fit_calibrator(contexts, correct, "platt", features=("score",), fit_on={"data_file": "synthetic"})
    assert calibrator.parameters["weights"][0] == pytest.approx(0.5, abs=0.03)
    assert calibrator.parameters["bias"] == pytest.approx(-4.0, abs=0.2)
    assert calibrator.fit_on == {
        "data_file": "synthetic",
        "questions": 20_000,
        "accuracy": pytest.approx(correct.mean()),
    }
    # The probability 0.9 says nothing about correctness here: badly calibrated; Platt fixes it.
    assert calibrator.ece_before > 0.2 and calibrator.ece_after < 0.02
    assert calibrator.confidences(ContextScores([8.0, 2.0], [0.99, 0.01])) == pytest.approx(
        sigmoid(np.array([0.0, -3.0])), abs=0.05
    )


def test_temperature_scaling_recovers_the_temperature():
    rng = np.random.default_rng(2)
    contexts, correct = [], []
    for _ in range(8000):
        scores = np.sort(rng.normal(0, 6, size=4))[::-1]
        contexts.append(ContextScores(list(scores), list(within_context_softmax(scores, None))))
        correct.append(rng.random() < within_context_softmax(scores, None, temperature=3.0)[0])
    calibrator = fit_calibrator(contexts, correct, "temperature")
    assert calibrator.parameters["temperature"] == pytest.approx(3.0, rel=0.1)
    assert calibrator.ece_after < 0.03 < calibrator.ece_before


def test_ece_of_a_calibrated_set_is_near_zero_and_of_an_overconfident_one_is_the_gap():
    rng = np.random.default_rng(3)
    confidence = rng.random(200_000)
    assert expected_calibration_error(confidence, rng.random(200_000) < confidence) < 0.01
    assert expected_calibration_error([0.9] * 10, [1] * 6 + [0] * 4) == pytest.approx(0.3)
    assert expected_calibration_error([], []) == 0.0
    table = reliability_table([0.0, 1.0, 0.5, 1 / CALIBRATION_BINS], [0, 1, 1, 0])
    assert len(table) == CALIBRATION_BINS == 15
    assert [r["count"] for r in table if r["count"]] == [1, 1, 1, 1]  # 0 → first bin, 1.0 → last, edges go up
    assert table[0]["count"] == 1 and table[1]["count"] == 1 and table[-1]["count"] == 1
    with pytest.raises(ValueError, match="differ in length"):
        expected_calibration_error([0.5], [1, 0])


def test_the_null_score_takes_its_share_of_the_within_context_softmax():
    p = within_context_softmax(np.array([2.0, 1.0]), 2.0)
    assert p.tolist() == pytest.approx((np.exp([2, 1]) / np.exp([2, 1, 2]).sum()).tolist())
    calibrator = Calibrator("temperature", {"temperature": 1.0})
    assert calibrator.confidences(ContextScores([2.0, 1.0], [0.5, 0.2], null_score=2.0)).tolist() == pytest.approx(
        p.tolist()
    )


@pytest.mark.parametrize(
    "data, message",
    [
        ({"method": "isotonic", "parameters": {}}, "method must be one of"),
        (
            {"method": "platt", "parameters": {"features": ["logit"], "weights": [1], "bias": 0}},
            "platt calibration needs",
        ),
        (
            {"method": "platt", "parameters": {"features": ["score"], "weights": [], "bias": 0}},
            "platt calibration needs",
        ),
        ({"method": "temperature", "parameters": {"temperature": 0}}, "temperature > 0"),
        ({"method": "temperature", "parameters": {"temperature": 1}, "score_threshold": 2}, "between 0 and 1"),
        ({"method": "temperature", "parameters": {"temperature": 1}, "colour": "red"}, "known fields"),
        ({"parameters": {}}, "needs 'method'"),
        ([1, 2], "expected an object"),
    ],
)
def test_a_bad_calibration_section_is_an_error_naming_it(data, message):
    with pytest.raises(ValueError, match=message):
        Calibrator.from_dict(data, "kqa_config.json: calibration")


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_thresholds_are_confidences(value):
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_threshold(value)


def test_saved_calibrator_round_trips_and_keeps_the_settings_loadable(tmp_path):
    from kqa.prediction import load_settings

    config = {"features": {"max_seq_length": 256}, "postprocess": {"n_best_size": 5}, "kqa_version": "0.1.0"}
    (tmp_path / "kqa_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert load_calibrator(tmp_path) is None  # a model without the section has no calibrator
    calibrator = Calibrator(
        "platt", {"features": ["score"], "weights": [0.5], "bias": -2.0}, 0.3, {"data_file": "dev.json"}, 0.2, 0.01
    )
    save_calibrator(tmp_path, calibrator)
    assert load_calibrator(tmp_path) == calibrator
    settings = load_settings(tmp_path)
    assert (settings.features.max_seq_length, settings.postprocess.n_best_size) == (256, 5)
    assert json.loads((tmp_path / "kqa_config.json").read_text())["kqa_version"] == "0.1.0"


# ---- kqa calibrate on a tiny model, end to end ----------------------------------------------------

MARK = 8.0
SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}


@pytest.fixture(scope="module")
def marked_model(tmp_path_factory, tiny_tokenizer_dir):
    """Marks 부산 (부 … ##산) in every context: right for the 부산 questions, wrong for the others."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    model = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})
    out = tmp_path_factory.mktemp("calibrate") / "model"
    model.save_pretrained(out, tokenizer=tokenizer, kqa_config=SETTINGS)
    return out


def test_kqa_calibrate_writes_a_loadable_calibrator_and_a_reliability_diagram(
    marked_model, korean_squad_file, tmp_path
):
    from kqa.inference import QuestionAnswerer

    out = tmp_path / "calibrated"
    command = [
        sys.executable,
        "-m",
        "kqa",
        "calibrate",
        "--model",
        str(marked_model),
        "--data_file",
        str(korean_squad_file),
    ]
    done = subprocess.run(
        [*command, "--output_dir", str(out), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["method"] == "platt" and summary["bins"] == CALIBRATION_BINS
    assert summary["fit_on"]["data_file"] == str(korean_squad_file) and summary["fit_on"]["questions"] > 0
    assert 0 <= summary["ece_after"] <= summary["ece_before"] + 1e-9
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (marked_model / "kqa_config.json").read_text().count("calibration")  # the source is untouched
    calibrator = load_calibrator(out)
    assert calibrator.to_dict() == {k: summary[k] for k in calibrator.to_dict()}
    qa = QuestionAnswerer.from_pretrained(out, device="cpu")
    answer = qa("가장 큰 항구 도시는 어디인가?", "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다.")
    assert answer.text == "부산" and 0 < answer.confidence < 1 and "confidence" in answer.to_dict()
    assert QuestionAnswerer.from_pretrained(marked_model, device="cpu")("항구는?", "부산이다.").confidence is None
    # kqa predict's JSON carries it too.
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "kqa",
            "predict",
            "--model",
            str(out),
            "--question",
            "항구는?",
            "--context",
            "부산이다.",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["confidence"] == pytest.approx(qa("항구는?", "부산이다.").confidence)
    again = subprocess.run([*command, "--output_dir", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 2 and "not empty" in again.stderr


# ---- abstention and ranking over documents ---------------------------------------------------------

NEAR = "가장 큰 항구 도시는 인천이다."  # the retriever's favourite; its span 인천 scores 2 × 6 = 12
FAR = "부산 이야기: 도시의 바다"  # a weaker passage whose span 부산 scores 2 × 8 = 16
QUESTION = "가장 큰 항구 도시는?"
# P(correct) = sigmoid(score - 14): 부산 0.88, 인천 0.12.
BY_SCORE = Calibrator("platt", {"features": ["score"], "weights": [1.0], "bias": -14.0}, score_threshold=0.5)


@pytest.fixture(scope="module")
def two_passages(tmp_path_factory):
    from kqa.inference import QuestionAnswerer
    from kqa.retrieval import Document, Retriever, RetrieverSettings

    tokenizer = build_char_tokenizer([NEAR, FAR, QUESTION])
    model = token_scoring_model(tokenizer, {"부": MARK, "인": 6.0}, {"##산": MARK, "##천": 6.0})
    directory = tmp_path_factory.mktemp("reader") / "model"
    model.save_pretrained(directory, tokenizer=tokenizer, kqa_config=SETTINGS)
    reader = QuestionAnswerer.from_pretrained(directory, device="cpu")
    documents = [Document(id=name, title="", text=text, source=name) for name, text in (("near", NEAR), ("far", FAR))]
    return Retriever.build(documents, RetrieverSettings(method="sparse", analyzer="bigrams")), reader


def test_a_calibrated_reader_keeps_the_retrieval_ranking_unless_asked_to_rank_by_confidence(two_passages):
    from kqa.retrieval import RetrieveAndRead

    retriever, reader = two_passages
    today = RetrieveAndRead(retriever, reader, passages=2).ask(QUESTION, top_k=2)
    assert [h.passage.doc_id for h in today.passages] == ["near", "far"]
    assert today.answers[0].text == "인천" and today.answers[0].confidence is None  # P(passage) decides
    assert not today.no_answer and today.score_threshold is None
    calibrated_reader = reader.with_settings()
    calibrated_reader.calibrator = BY_SCORE
    # Calibration alone changes the confidences, not the ranking (measured worse with a gold-passage reader).
    kept = RetrieveAndRead(retriever, calibrated_reader, passages=2).ask(QUESTION, top_k=2, score_threshold=0.0)
    assert [a.text for a in kept.answers] == ["인천", "부산"]
    assert kept.answers[0].confidence == pytest.approx(sigmoid(-2.0), abs=1e-3)
    with pytest.raises(ValueError, match="rank_by"):
        RetrieveAndRead(retriever, calibrated_reader, rank_by="score")
    with pytest.raises(ValueError, match="needs a calibrated reader"):
        RetrieveAndRead(retriever, reader, passages=2, rank_by="confidence").ask(QUESTION)
    calibrated = RetrieveAndRead(retriever, calibrated_reader, passages=2, rank_by="confidence")
    result = calibrated.ask(QUESTION, top_k=2)
    assert [a.text for a in result.answers] == ["부산", "인천"]
    assert result.answers[0].confidence == pytest.approx(sigmoid(2.0), abs=1e-3)
    assert result.answers[1].confidence == pytest.approx(sigmoid(-2.0), abs=1e-3)
    assert result.best_confidence == result.answers[0].confidence and result.score_threshold == 0.5


def test_below_the_threshold_the_pipeline_answers_no_answer(two_passages):
    from kqa.retrieval import RetrieveAndRead

    retriever, reader = two_passages
    pipeline = RetrieveAndRead(retriever, reader.with_settings(), passages=2, rank_by="confidence")
    pipeline.reader.calibrator = BY_SCORE
    withheld = pipeline.ask(QUESTION, score_threshold=0.9)
    assert withheld.answers == [] and withheld.no_answer
    assert withheld.best_confidence == pytest.approx(sigmoid(2.0), abs=1e-3) and len(withheld.passages) == 2
    assert withheld.to_dict()["no_answer"] is True
    assert pipeline(QUESTION, score_threshold=0.9) is None
    assert pipeline(QUESTION, score_threshold=0.85).text == "부산"
    assert pipeline(QUESTION).text == "부산"  # the stored default, 0.5
    with pytest.raises(ValueError, match="between 0 and 1"):
        pipeline.ask(QUESTION, score_threshold=1.5)
    uncalibrated = RetrieveAndRead(retriever, reader, passages=2)
    with pytest.raises(ValueError, match="needs a calibrated model"):
        uncalibrated.ask(QUESTION, score_threshold=0.5)
