"""The tuned null threshold: `kqa evaluate --store_null_threshold` finds it on a set with unanswerable
questions and writes it into kqa_config.json; `QuestionAnswerer` then answers with it unless a call
overrides it. The model's logits are set by hand (`kqa.testing.token_scoring_model`): "부산" scores
8 + 8 = 16 as a span, the CLS token 10 + 10 = 20 as the null answer, every other span 0."""

from __future__ import annotations

import json

import pytest

from kqa.cli.evaluate import main as evaluate_main
from kqa.inference import QuestionAnswerer
from kqa.modeling import KQA_CONFIG_FILE
from kqa.postprocess import PostprocessConfig
from kqa.prediction import NULL_THRESHOLD_SOURCE_KEY, PredictionSettings, load_settings
from kqa.testing import KOREAN_EXAMPLES, token_scoring_model

BUSAN = KOREAN_EXAMPLES[1]  # answer 부산: null odds 20 - 16 = 4, answered only with a threshold >= 4
NEWTON = KOREAN_EXAMPLES[2]  # asked as unanswerable: best span 0, null odds 20


def _save_model(tokenizer, path, *, v2: bool = True):
    model = token_scoring_model(tokenizer, {"부": 8.0, "[CLS]": 10.0}, {"##산": 8.0, "[CLS]": 10.0})
    post = PostprocessConfig(version_2_with_negative=v2, answer_boundaries="off")
    model.save_pretrained(path, tokenizer=tokenizer, kqa_config=PredictionSettings(postprocess=post).to_dict())
    return path


def _squad_file(path, *, with_unanswerable: bool = True):
    qas = [{"id": BUSAN["id"], "question": BUSAN["question"], "answers": [{"text": "부산", "answer_start": 28}]}]
    paragraphs = [{"context": BUSAN["context"], "qas": qas}]
    if with_unanswerable:
        qa = {"id": "none-1", "question": "대한민국의 수도는 어디인가?", "answers": [], "is_impossible": True}
        paragraphs.append({"context": NEWTON["context"], "qas": [qa]})
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}, ensure_ascii=False), "utf-8")
    return path


def _evaluate(capsys, *argv) -> dict:
    assert evaluate_main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_store_null_threshold_travels_with_the_model(tiny_tokenizer, tmp_path, capsys):
    model_dir = _save_model(tiny_tokenizer, tmp_path / "model")
    data = _squad_file(tmp_path / "dev.json")
    before = QuestionAnswerer.from_pretrained(model_dir)
    assert before(BUSAN["question"], BUSAN["context"]).text == ""  # odds 4 > the default threshold 0

    out = _evaluate(capsys, "--model", str(model_dir), "--data_file", str(data), "--output_dir", str(tmp_path / "ev"))
    assert out["exact_match"] == 50.0
    v2 = out["squad_v2"]
    assert v2["HasAns_total"] == 1 and v2["NoAns_total"] == 1
    assert v2["HasAns_exact"] == 0.0 and v2["NoAns_exact"] == 100.0 and v2["exact"] == 50.0
    assert v2["best_f1"] == 100.0 and v2["best_f1_thresh"] == pytest.approx(4.0, abs=1e-3)
    odds = json.loads((tmp_path / "ev" / "null_odds.json").read_text("utf-8"))
    assert odds[BUSAN["id"]] == v2["best_f1_thresh"] and odds["none-1"] == pytest.approx(20.0, abs=1e-3)
    assert load_settings(model_dir).postprocess.null_score_diff_threshold == 0.0  # nothing stored yet

    out = _evaluate(capsys, "--model", str(model_dir), "--data_file", str(data), "--store_null_threshold")
    saved = json.loads((model_dir / KQA_CONFIG_FILE).read_text("utf-8"))
    assert saved["postprocess"]["null_score_diff_threshold"] == out["squad_v2"]["best_f1_thresh"]
    source = saved[NULL_THRESHOLD_SOURCE_KEY]
    assert source["data_file"] == str(data.resolve()) and source["best_f1"] == 100.0 and source["date"]
    assert load_settings(model_dir).postprocess.null_score_diff_threshold == pytest.approx(4.0, abs=1e-3)

    answerer = QuestionAnswerer.from_pretrained(model_dir)
    assert answerer(BUSAN["question"], BUSAN["context"]).text == "부산"
    assert answerer(NEWTON["question"], NEWTON["context"]).text == ""
    assert answerer(BUSAN["question"], BUSAN["context"], null_score_diff_threshold=0.0).text == ""
    # evaluating again with the stored threshold answers both right
    assert _evaluate(capsys, "--model", str(model_dir), "--data_file", str(data))["exact_match"] == 100.0


def test_store_null_threshold_refuses_what_it_cannot_do(tiny_tokenizer, tmp_path):
    data = _squad_file(tmp_path / "dev.json")
    plain = _save_model(tiny_tokenizer, tmp_path / "v1", v2=False)
    with pytest.raises(ValueError, match="not trained with version_2_with_negative"):
        evaluate_main(["--model", str(plain), "--data_file", str(data), "--store_null_threshold"])
    model_dir = _save_model(tiny_tokenizer, tmp_path / "v2")
    answerable = _squad_file(tmp_path / "answerable.json", with_unanswerable=False)
    with pytest.raises(ValueError, match=r"answerable\.json: no unanswerable question"):
        evaluate_main(["--model", str(model_dir), "--data_file", str(answerable), "--store_null_threshold"])
    assert load_settings(model_dir).postprocess.null_score_diff_threshold == 0.0
    with pytest.raises(ValueError, match="--store_null_threshold needs --model"):
        evaluate_main(["--predictions", str(data), "--data_file", str(data), "--store_null_threshold"])
    with pytest.raises(ValueError, match="not a local model directory"):
        evaluate_main(["--model", "org/name", "--data_file", str(data), "--store_null_threshold"])


def test_predictions_file_with_null_odds(tmp_path, capsys):
    data = _squad_file(tmp_path / "dev.json")
    pred, odds = tmp_path / "pred.json", tmp_path / "null_odds.json"
    pred.write_text(json.dumps({BUSAN["id"]: "부산", "none-1": "뉴턴"}, ensure_ascii=False), "utf-8")
    odds.write_text(json.dumps({BUSAN["id"]: -1.0, "none-1": 2.0}), "utf-8")
    out = _evaluate(capsys, "--predictions", str(pred), "--data_file", str(data), "--null_odds_file", str(odds))
    assert out["exact_match"] == 50.0 and out["squad_v2"]["exact"] == 50.0
    assert out["squad_v2"]["best_exact"] == 100.0 and out["squad_v2"]["best_exact_thresh"] == -1.0
    plain = _evaluate(capsys, "--predictions", str(pred), "--data_file", str(data))
    assert plain["squad_v2"]["NoAns_exact"] == 0.0 and "best_f1" not in plain["squad_v2"]


def test_training_metrics_carry_the_v2_scores():
    from kqa.metric import score_predictions
    from kqa.metric_v2 import score_predictions_v2
    from kqa.training.tracking import evaluation_metrics

    rows = [
        {"id": "a", "answers": {"text": ["부산"], "answer_start": [0]}},
        {"id": "b", "answers": {"text": [], "answer_start": []}},
    ]
    preds, odds = {"a": "부산", "b": "서울"}, {"a": -1.0, "b": 3.0}
    evaluation = type("E", (), {"result": score_predictions(rows, preds), "loss": None})()
    evaluation.v2 = score_predictions_v2(rows, preds, odds)
    metrics = evaluation_metrics({"dev": evaluation})
    assert metrics["dev/HasAns_f1"] == 100.0 and metrics["dev/NoAns_exact"] == 0.0
    assert metrics["dev/best_f1"] == 100.0 and metrics["dev/best_f1_thresh"] == -1.0


def test_training_stores_the_threshold_of_the_chosen_set(tiny_tokenizer, tmp_path):
    """`TrainConfig.store_null_threshold`: `first` takes the first set with unanswerable questions, a name
    that set; the threshold lands in best/'s kqa_config.json with the set's file."""
    from kqa.metric_v2 import score_predictions_v2
    from kqa.postprocess import PostprocessConfig
    from kqa.training.config import TrainConfig
    from kqa.training.evaluation import store_training_threshold

    class Accelerator:
        is_main_process = True

        def wait_for_everyone(self):
            pass

    with pytest.raises(ValueError, match="store_null_threshold needs version_2_with_negative"):
        TrainConfig(train_files=["x.json"], store_null_threshold="first")
    post = PostprocessConfig(version_2_with_negative=True)
    config = TrainConfig(
        train_files=["x.json"], validation_files=["plain=a.json", "v2=b.json"], postprocess=post,
        store_null_threshold="first",
    )  # fmt: skip
    rows = [{"id": "a", "answers": {"text": ["부산"], "answer_start": [0]}}, {"id": "b", "answers": {"text": []}}]
    v2 = score_predictions_v2(rows, {"a": "부산", "b": "서울"}, {"a": 1.5, "b": 3.0})
    model_dir = _save_model(tiny_tokenizer, tmp_path / "best")
    store_training_threshold(Accelerator(), config, model_dir, {"plain": None, "v2": v2})
    saved = json.loads((model_dir / KQA_CONFIG_FILE).read_text("utf-8"))
    assert saved["postprocess"]["null_score_diff_threshold"] == 1.5
    assert saved[NULL_THRESHOLD_SOURCE_KEY]["data_file"].endswith("b.json")
    config.store_null_threshold = "plain"
    with pytest.raises(ValueError, match="no unanswerable question"):
        store_training_threshold(Accelerator(), config, model_dir, {"plain": None, "v2": v2})
    config.store_null_threshold = "missing"
    with pytest.raises(ValueError, match="no validation set of that name"):
        store_training_threshold(Accelerator(), config, model_dir, {"plain": None, "v2": v2})


def test_the_threshold_is_a_flag_of_evaluate_and_predict(tiny_tokenizer, tmp_path, capsys):
    """`--null_score_diff_threshold` overrides the saved one for one run, as the other decoding settings do."""
    from kqa.cli import main as kqa_main

    model_dir = _save_model(tiny_tokenizer, tmp_path / "model")
    data = _squad_file(tmp_path / "dev.json")
    assert _evaluate(capsys, "--model", str(model_dir), "--data_file", str(data))["exact_match"] == 50.0
    argv = ["--model", str(model_dir), "--data_file", str(data), "--null_score_diff_threshold", "5"]
    assert _evaluate(capsys, *argv)["exact_match"] == 100.0
    ask = ["predict", "--model", str(model_dir), "--question", BUSAN["question"], "--context", BUSAN["context"]]
    assert kqa_main([*ask, "--null_score_diff_threshold", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "부산"
    assert load_settings(model_dir).postprocess.null_score_diff_threshold == 0.0  # the saved one is unchanged
