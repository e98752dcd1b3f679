"""The answer ranker (`kqa.answer_ranking`, `kqa calibrate --open`) and retrieve-then-read with it:
synthetic candidates whose right answer is known, hand-set scores whose ranking is certain, and the
command end to end on a tiny hand-set reader and a tiny random encoder."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kqa.answer_ranking import (
    ANSWER_FEATURES,
    RANKING_FEATURES,
    AnswerRanker,
    QuestionCandidates,
    answer_features,
    fit_answer_ranker,
    load_answer_ranker,
    save_answer_ranker,
    threshold_for_answer_rate,
)
from kqa.calibration import Calibrator, load_calibrator, save_calibrator, sigmoid
from kqa.testing import build_char_tokenizer, tiny_bert_config, token_scoring_model

ROOT = Path(__file__).resolve().parents[1]


def synthetic_questions(rng, n, *, in_index=True, candidates=4):
    """Each question's right answer (in index; none when removed) is the candidate of the highest cosine,
    while log P(passage) x P(span) is noise: only a ranking that reads the cosine finds it."""
    out = []
    for _ in range(n):
        x = rng.normal(size=(candidates, len(ANSWER_FEATURES)))
        correct = np.zeros(candidates)
        if in_index:
            x[:, 2] += 1.0  # their passages are nearer the question
            correct[int(np.argmax(x[:, 2]))] = 1.0
        out.append(QuestionCandidates(x, correct, in_index))
    return out


def test_the_ranking_learns_which_score_marks_the_right_answer():
    rng = np.random.default_rng(0)
    fit = synthetic_questions(rng, 400) + synthetic_questions(rng, 400, in_index=False)
    ranker = fit_answer_ranker(fit)
    assert ranker.features == list(RANKING_FEATURES) == list(ANSWER_FEATURES)  # kqa calibrate --open: all of them
    assert ranker.weights[2] == max(ranker.weights, key=abs) > 0  # the cosine carries the weight
    test = synthetic_questions(rng, 200)
    by_ranker = np.mean([q.correct[int(np.argmax(ranker.logits(q.features)))] for q in test])
    by_probability = np.mean([q.correct[int(np.argmax(q.features[:, 0]))] for q in test])
    assert by_ranker > 0.9 and by_probability < 0.4
    # The confidence of the best answer: higher where the document is indexed, calibrated on the fit set.
    removed = synthetic_questions(rng, 200, in_index=False)
    best = [float(ranker.confidences(q.features).max()) for q in test]
    best_removed = [float(ranker.confidences(q.features).max()) for q in removed]
    assert np.mean(best) > 2 * np.mean(best_removed)
    # The second regression corrects the first's confidence in the best of several candidates (selection).
    from kqa.calibration import expected_calibration_error

    top = [int(np.argmax(ranker.logits(q.features))) for q in fit]
    first_stage = [float(sigmoid(ranker.logits(q.features)[t])) for q, t in zip(fit, top)]
    ece_first = expected_calibration_error(first_stage, [q.correct[t] for q, t in zip(fit, top)])
    assert ranker.fit_on["ece"] < min(0.1, ece_first / 2), (ranker.fit_on["ece"], ece_first)
    assert ranker.fit_on["questions"] == 800
    assert ranker.fit_on["questions_document_in_index"] == 400 and ranker.fit_on["candidates"] == 3200


def test_the_default_threshold_answers_the_target_share_of_indexed_questions():
    assert threshold_for_answer_rate([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0], 0.9) == 0.2
    assert threshold_for_answer_rate([0.5, 0.1, 0.9], 1.0) == 0.1
    assert threshold_for_answer_rate([], 0.9) == 0.0
    rng = np.random.default_rng(1)
    questions = synthetic_questions(rng, 300) + synthetic_questions(rng, 300, in_index=False)
    ranker = fit_answer_ranker(questions, target_answer_rate=0.8)
    best = np.array([ranker.confidences(q.features).max() for q in questions[:300]])
    assert np.mean(best >= ranker.score_threshold) >= 0.8 > np.mean(best > ranker.score_threshold + 1e-9) - 0.01
    assert fit_answer_ranker(questions, score_threshold=0.42).score_threshold == 0.42


def test_questions_without_a_candidate_count_as_unanswered_for_the_threshold():
    """A reader whose null answer wins in every passage read gives a question no candidate: the fit skips
    it, but it is one of the indexed questions the default threshold's answer rate is taken over."""
    rng = np.random.default_rng(4)
    questions = synthetic_questions(rng, 300) + synthetic_questions(rng, 300, in_index=False)
    empty = [QuestionCandidates(np.zeros((0, len(ANSWER_FEATURES))), np.zeros(0), True) for _ in range(50)]
    ranker, with_empty = (
        fit_answer_ranker(questions, target_answer_rate=0.8),
        fit_answer_ranker(questions + empty, target_answer_rate=0.8),
    )
    assert with_empty.weights == ranker.weights and with_empty.slope == ranker.slope  # the same fit
    best = np.array([with_empty.confidences(q.features).max() for q in questions[:300]])
    answered = int(np.sum(best >= with_empty.score_threshold))  # of all 350 indexed questions: 0.8 is 280
    assert 280 <= answered <= 281 and with_empty.score_threshold < ranker.score_threshold
    assert with_empty.fit_on["questions"] == 650 and with_empty.fit_on["questions_without_candidates"] == 50
    assert (
        with_empty.fit_on["questions_document_in_index"] == 350 and ranker.fit_on["questions_without_candidates"] == 0
    )
    # More questions without a candidate than the rate leaves unanswered: every candidate passes.
    assert fit_answer_ranker(questions + empty * 2, target_answer_rate=0.8).score_threshold == 0.0


def test_fitting_needs_right_and_wrong_answers():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="nothing to learn"):
        fit_answer_ranker(synthetic_questions(rng, 10, in_index=False))
    with pytest.raises(ValueError, match="no question has a candidate"):
        fit_answer_ranker([QuestionCandidates(np.zeros((0, 4)), np.zeros(0), True)])
    with pytest.raises(ValueError, match="hybrid"):
        answer_features(0.5, 3.0, None, 2.0, 1.0)
    with pytest.raises(ValueError, match="null"):
        answer_features(0.5, 3.0, 0.8, 2.0, None)
    with pytest.raises(ValueError, match="in that order"):
        fit_answer_ranker(synthetic_questions(rng, 10), features=["score", "log_probability"])


def test_a_ranker_fitted_on_fewer_features_reads_only_its_own_columns():
    rng = np.random.default_rng(3)
    fit = synthetic_questions(rng, 300) + synthetic_questions(rng, 300, in_index=False)
    without_cosine = fit_answer_ranker(fit, features=["log_probability", "score", "null_score"])
    assert without_cosine.features == ["log_probability", "score", "null_score"] and len(without_cosine.weights) == 3
    test = synthetic_questions(rng, 200)
    picks = np.mean([q.correct[int(np.argmax(without_cosine.logits(q.features)))] for q in test])
    assert picks < 0.4  # blind to the cosine that marks the right answer
    x = test[0].features.copy()
    x[:, 2] += 100.0  # a column it does not read changes nothing
    assert np.array_equal(without_cosine.logits(x), without_cosine.logits(test[0].features))


# A ranker of the first four features (as saved before the null score was one): P(correct) = sigmoid(score - 14).
RANKER = dict(
    features=list(ANSWER_FEATURES[:4]),
    mean=[0.0] * 4,
    scale=[1.0] * 4,
    weights=[0.0, 1.0, 0.0, 0.0],
    bias=-14.0,
    slope=1.0,
    intercept=0.0,
    score_threshold=0.5,
)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"features": ["score", "log_probability", "dense_score", "null_score"]}, "features must be"),
        ({"features": ["log_probability", "score", "score", "null_score"]}, "features must be"),
        ({"features": ["log_probability", "score", "cosine", "null_score"]}, "features must be"),
        ({"weights": [1.0]}, "4 numbers each"),
        ({"scale": [1.0, 0.0, 1.0, 1.0]}, "scale must be positive"),
        ({"score_threshold": 2.0}, "between 0 and 1"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_a_bad_answer_ranking_section_is_an_error_naming_it(change, message):
    with pytest.raises(ValueError, match=message) as err:
        AnswerRanker.from_dict({**RANKER, **change}, "m/kqa_config.json: answer_ranking")
    assert "m/kqa_config.json: answer_ranking" in str(err.value)


def test_the_ranker_and_the_calibrator_are_saved_beside_each_other(tmp_path):
    (tmp_path / "kqa_config.json").write_text(json.dumps({"kqa_version": "0.1.0", "max_seq_length": 512}))
    ranker = AnswerRanker(**RANKER, fit_on={"data_file": "dev.json"})
    calibrator = Calibrator("temperature", {"temperature": 2.0})
    save_answer_ranker(tmp_path, ranker)
    save_calibrator(tmp_path, calibrator)
    assert load_answer_ranker(tmp_path) == ranker and load_calibrator(tmp_path) == calibrator
    save_answer_ranker(tmp_path, AnswerRanker(**{**RANKER, "bias": -1.0}))
    assert load_answer_ranker(tmp_path).bias == -1.0 and load_calibrator(tmp_path) == calibrator
    from kqa.prediction import load_settings

    assert load_settings(tmp_path).features.max_seq_length == 512  # the settings still load
    (tmp_path / "kqa_config.json").write_text(json.dumps({"kqa_version": "0.1.0"}))
    assert load_answer_ranker(tmp_path) is None


# ---- retrieve-then-read with a ranker ---------------------------------------------------------------

MARK = 8.0
CLS_START, CLS_END = 1.5, 0.5  # the reader's null score, 2.0 in every passage
SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
NEAR = "가장 큰 항구 도시는 인천이다."  # the retriever's favourite; its span 인천 scores 2 × 6 = 12
FAR = "부산 이야기: 도시의 바다"  # a weaker passage whose span 부산 scores 2 × 8 = 16
QUESTION = "가장 큰 항구 도시는?"


def save_encoder(directory: Path, texts) -> Path:
    import torch
    from transformers import BertModel

    tokenizer = build_char_tokenizer(texts)
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reader_and_encoder(tmp_path_factory):
    from kqa.inference import QuestionAnswerer

    root = tmp_path_factory.mktemp("ranker")
    tokenizer = build_char_tokenizer([NEAR, FAR, QUESTION])
    model = token_scoring_model(
        tokenizer, {"부": MARK, "인": 6.0, "[CLS]": CLS_START}, {"##산": MARK, "##천": 6.0, "[CLS]": CLS_END}
    )
    model.save_pretrained(root / "reader", tokenizer=tokenizer, kqa_config=SETTINGS)
    reader = QuestionAnswerer.from_pretrained(root / "reader", device="cpu")
    return reader, save_encoder(root / "encoder", [NEAR, FAR, QUESTION])


def two_passage_index(encoder_dir, method="hybrid"):
    from kqa.retrieval import Document, Embedder, Retriever, RetrieverSettings

    documents = [Document(id=name, title="", text=text, source=name) for name, text in (("near", NEAR), ("far", FAR))]
    embedder = Embedder.from_pretrained(encoder_dir, device="cpu") if method != "sparse" else None
    return Retriever.build(documents, RetrieverSettings(method=method, analyzer="bigrams"), embedder=embedder)


def test_a_reader_with_a_ranker_ranks_and_abstains_by_its_confidence(reader_and_encoder, caplog):
    from kqa.retrieval import RetrieveAndRead

    reader, encoder_dir = reader_and_encoder
    index = two_passage_index(encoder_dir)
    found = {h.passage.doc_id: h for h in index.retrieve(QUESTION, 2)}
    assert found["near"].rank == 1  # the retriever prefers the passage without the answer
    default = RetrieveAndRead(index, reader, passages=2).ask(QUESTION, top_k=2)
    assert [a.text for a in default.answers] == ["인천", "부산"] and default.answers[0].confidence is None
    ranked_reader = reader.with_settings()
    ranked_reader.answer_ranker = AnswerRanker(**RANKER)  # P(correct) = sigmoid(score - 14)
    pipeline = RetrieveAndRead(index, ranked_reader, passages=2)
    assert pipeline.rank_by == "confidence"
    result = pipeline.ask(QUESTION, top_k=2)
    assert [a.text for a in result.answers] == ["부산", "인천"]
    for answer in result.answers:  # the confidence is the ranker's, from the answer's own features
        hit = found[answer.doc_id]
        features = answer_features(answer.probability, answer.score, hit.dense_score, hit.sparse_score, 0.0)
        assert answer.confidence == pytest.approx(float(sigmoid(np.array(features[1] - 14.0))), rel=1e-6)
        assert answer.null_score == CLS_START + CLS_END  # its passage's CLS score, as the reader gave it
    assert result.answers[0].confidence == pytest.approx(float(sigmoid(np.array(2.0))), abs=1e-3)
    assert result.score_threshold == 0.5 and not result.no_answer  # the ranker's stored threshold
    # A ranker of all five features reads the passage's null score: logit = score - null score - 12.
    five = {"features": list(ANSWER_FEATURES), "mean": [0.0] * 5, "scale": [1.0] * 5}
    weights = {"weights": [0.0, 1.0, 0.0, 0.0, -1.0], "bias": -12.0}
    ranked_reader.answer_ranker = AnswerRanker(**{**RANKER, **five, **weights})
    with_null = RetrieveAndRead(index, ranked_reader, passages=2).ask(QUESTION, top_k=2)
    assert [a.text for a in with_null.answers] == ["부산", "인천"]
    for answer in with_null.answers:
        expected = sigmoid(np.array(answer.score - (CLS_START + CLS_END) - 12.0))
        assert answer.confidence == pytest.approx(float(expected), rel=1e-6)
    ranked_reader.answer_ranker = AnswerRanker(**RANKER)
    withheld = pipeline.ask(QUESTION, score_threshold=0.9)
    assert withheld.no_answer and withheld.answers == [] and withheld.best_confidence > 0.85
    # A call with another method has no cosine: ranked by probability, never withheld.
    sparse_call = pipeline.ask(QUESTION, top_k=2, method="sparse", score_threshold=0.9)
    assert [a.text for a in sparse_call.answers] == ["인천", "부산"] and not sparse_call.no_answer
    assert sparse_call.answers[0].confidence is None
    # An index without embeddings: the ranker is set aside, with a warning.
    with caplog.at_level(logging.WARNING, logger="kqa.retrieval.pipeline"):
        bm25_only = RetrieveAndRead(two_passage_index(encoder_dir, "sparse"), ranked_reader, passages=2)
    assert "answer ranker needs an index with embeddings and BM25" in caplog.text
    assert bm25_only.rank_by == "probability" and bm25_only.ask(QUESTION).answers[0].text == "인천"


def test_kqa_calibrate_open_fits_saves_and_serves_an_answer_ranker(tmp_path):
    from kqa.data import load_data_file
    from kqa.inference import QuestionAnswerer
    from kqa.retrieval import RetrieveAndRead
    from kqa.retrieval.open_calibration import dev_documents
    from kqa.testing import KOREAN_EXAMPLES, korean_squad_json

    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    texts = [e["context"] for e in KOREAN_EXAMPLES] + [e["question"] for e in KOREAN_EXAMPLES]
    encoder = save_encoder(tmp_path / "encoder", texts)
    tokenizer = build_char_tokenizer(texts)
    marked = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})  # 부산, right for one question
    marked.save_pretrained(tmp_path / "model", tokenizer=tokenizer, kqa_config=SETTINGS)
    out = tmp_path / "calibrated"
    command = [sys.executable, "-m", "kqa", "calibrate", "--model", str(tmp_path / "model"), "--data_file", str(dev)]
    command += ["--open", "--embedding_model", str(encoder), "--passages", "2", "--device", "cpu"]
    done = subprocess.run([*command, "--output_dir", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    loaded, _ = load_data_file(dev)
    assert summary["fit_on"]["questions"] == 2 * len(loaded) and summary["fit_on"]["documents"] == 3
    assert summary["fit_on"]["questions_document_in_index"] == len(loaded)
    assert summary["fit_on"]["embedding_model"] == str(encoder) and summary["fit_on"]["passages"] == 2
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "answer_ranking" not in (tmp_path / "model" / "kqa_config.json").read_text()  # the source is untouched
    qa = QuestionAnswerer.from_pretrained(out, device="cpu")
    assert qa.answer_ranker == AnswerRanker.from_dict({k: summary[k] for k in RANKER | {"fit_on": 0}})
    from kqa.retrieval import Embedder
    from kqa.retrieval.open_calibration import dev_index

    documents, _ = dev_documents(list(loaded))
    pipeline = RetrieveAndRead(dev_index(documents, Embedder.from_pretrained(encoder, device="cpu")), qa, passages=2)
    result = pipeline.ask("가장 큰 항구 도시는 어디인가?", score_threshold=0.0)
    assert pipeline.rank_by == "confidence" and result.answers[0].text == "부산"
    assert 0 < result.answers[0].confidence < 1


def test_bench_open_ranking_reads_a_null_answer_model_with_and_without_its_null_answer(tmp_path):
    """benchmarks/bench_open_ranking.py end to end on two tiny dev sets. The reader was saved with
    `version_2_with_negative` and a CLS score (2) above every span that neither starts at 부 nor ends at 산
    (부산: 16): read as saved, the null answer wins in the passages without them, which then give no
    answer; `--version-2-with-negative false` reads spans in every passage, the null score still each
    answer's feature."""
    from kqa.testing import KOREAN_EXAMPLES, korean_squad_json

    data = tmp_path / "data"
    data.mkdir()
    for name in ("korquad_dev.json", "tydi_dev.json"):
        (data / name).write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    texts = [e["context"] for e in KOREAN_EXAMPLES] + [e["question"] for e in KOREAN_EXAMPLES]
    encoder = save_encoder(tmp_path / "encoder", texts)
    tokenizer = build_char_tokenizer(texts)
    reader = token_scoring_model(tokenizer, {"부": MARK, "[CLS]": 1.0}, {"##산": MARK, "[CLS]": 1.0})
    reader.save_pretrained(
        tmp_path / "reader", tokenizer=tokenizer, kqa_config={**SETTINGS, "version_2_with_negative": True}
    )

    def bench(*flags: str) -> dict:
        out = tmp_path / f"open{len(flags)}.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "bench_open_ranking.py"), "--data-dir", str(data)]
        command += ["--embedding-model", str(encoder), "--reader", str(tmp_path / "reader"), "--passages", "1"]
        done = subprocess.run(
            [*command, *flags, "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return json.loads(out.read_text(encoding="utf-8"))

    def default_answer_rate(result: dict) -> dict:
        return {r["set"]: r["answer rate"] for r in result["rankings"] if r["ranking"].startswith("P(passage)")}

    as_saved, spans_only = bench(), bench("--version-2-with-negative", "false")
    assert spans_only["settings"]["version_2_with_negative"] is False
    assert default_answer_rate(spans_only) == {"korquad": 1.0, "tydi": 1.0}
    # Read as saved, only the questions that read 부산's passage get an answer. One passage each: with two,
    # whether a question's pair held that passage hinged on the tiny random encoder's ranking of the rest.
    assert all(0 < rate < 1 for rate in default_answer_rate(as_saved).values())
    for result in (as_saved, spans_only):
        assert {r["set"] for r in result["rankings"]} == {"korquad", "tydi"} and len(result["rankings"]) == 8
        assert all(ranker["features"] == list(ANSWER_FEATURES) for ranker in result["rankers"].values())
