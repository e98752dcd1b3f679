"""QuestionAnswerer and the `kqa predict` command on a tiny model trained in the fixture."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch

from kqa.config import TrainConfig
from kqa.inference import Answer, QuestionAnswerer
from kqa.loop import QATrainingRecipe
from kqa.testing import KOREAN_EXAMPLES, tiny_bert_config

ROOT = Path(__file__).resolve().parent.parent
CAPITAL = KOREAN_EXAMPLES[0]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny BERT fine-tuned on the hand-written examples (it memorises them)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from transformers import AutoTokenizer, BertModel

    from kqa.testing import korean_squad_json

    root = tmp_path_factory.mktemp("inference")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    data = root / "ko.json"
    data.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    config = TrainConfig(model_name_or_path=str(root / "backbone"), dataset_name=None, train_files=[str(data)],
                         validation_files=[f"ko={data}"], max_seq_length=64, doc_stride=16, max_query_length=16,
                         max_answer_length=10, per_device_train_batch_size=4, learning_rate=3e-3, warmup_ratio=0.0,
                         max_train_steps=300, mixed_precision="no", eval_strategy="steps", eval_steps=300,
                         save_strategy="no", output_dir=str(root / "run"), disable_tqdm=True, seed=13)
    result = QATrainingRecipe(config).setup().train()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    assert result.final_metrics["exact_match"] == 100, result.final_metrics  # memorised every example
    return root / "run" / "best"


@pytest.fixture(scope="module")
def qa(trained_dir):
    return QuestionAnswerer.from_pretrained(trained_dir, device="cpu")


def test_the_capital_question_comes_back_as_a_span_with_a_score(qa):
    answer = qa(CAPITAL["question"], CAPITAL["context"])
    assert isinstance(answer, Answer)
    assert answer.text == "서울"
    assert CAPITAL["context"][answer.start:answer.end] == "서울" and answer.start == 10
    assert 0 < answer.probability <= 1 and answer.score == answer.score  # a real, finite score


def test_top_k_lists_distinct_spans_best_first(qa):
    answers = qa(CAPITAL["question"], CAPITAL["context"], top_k=5)
    assert len(answers) == 5
    assert answers[0] == qa(CAPITAL["question"], CAPITAL["context"])  # same input, same numbers
    scores = [a.score for a in answers]
    assert scores == sorted(scores, reverse=True)
    assert len({(a.start, a.end) for a in answers}) == 5
    for a in answers:
        assert CAPITAL["context"][a.start:a.end] == a.text


def test_batches_give_the_same_answers_as_single_questions(qa):
    questions = [ex["question"] for ex in KOREAN_EXAMPLES]
    contexts = [ex["context"] for ex in KOREAN_EXAMPLES]
    batched = qa(questions, contexts)
    single = [qa(q, c) for q, c in zip(questions, contexts)]
    # Padding in a batch changes the floating-point sums slightly, not the answers.
    assert [(a.text, a.start, a.end) for a in batched] == [(a.text, a.start, a.end) for a in single]
    assert [a.score for a in batched] == pytest.approx([a.score for a in single], abs=1e-4)
    assert [a.text for a in batched] == [ex["answers"]["text"][0] for ex in KOREAN_EXAMPLES]


def test_a_long_context_is_windowed_and_the_answer_found_late(qa):
    # The answer's sentence sits after ~10 windows of unrelated text (max_seq_length 64).
    filler = " ".join(ex["context"] for ex in KOREAN_EXAMPLES[2:]) * 4
    context = filler + " " + CAPITAL["context"]
    answers = qa(CAPITAL["question"], context, top_k=20)
    for a in answers:
        assert context[a.start:a.end] == a.text
    # The memorised span is found in its late window, at its offset in the whole context (a tiny
    # memorising model may rank a span of the filler's other passages above it).
    assert any(a.text == "서울" and a.start == len(filler) + 1 + 10 for a in answers)


def test_nfd_context_answers_are_slices_of_the_nfd_text(qa):
    context = unicodedata.normalize("NFD", CAPITAL["context"])
    answer = qa(CAPITAL["question"], context)
    assert context[answer.start:answer.end] == answer.text
    assert unicodedata.normalize("NFC", answer.text) == "서울"


def test_bad_input_is_rejected(qa):
    with pytest.raises(ValueError, match="2 questions and 1 contexts"):
        qa(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="'context' must be a non-empty string"):
        qa("질문", "   ")


def test_predict_rows_equals_the_evaluation_predictions(qa, trained_dir, tmp_path):
    from kqa.evaluation import evaluate_model
    from kqa.testing import korean_squad_json

    data = tmp_path / "ko.json"
    data.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    evaluate_model(trained_dir, data, output_dir=tmp_path / "eval", disable_tqdm=True)
    expected = json.loads((tmp_path / "eval" / "predictions.json").read_text(encoding="utf-8"))
    predictions = qa.predict_rows(KOREAN_EXAMPLES)
    assert {k: p.text for k, p in predictions.items()} == expected


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kqa", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_cli_answers_one_question(trained_dir):
    proc = _cli("predict", "--model", str(trained_dir), "--question", CAPITAL["question"],
                "--context", CAPITAL["context"], "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout)
    assert answer["text"] == "서울" and (answer["start"], answer["end"]) == (10, 12)


def test_cli_reads_jsonl_and_unlabelled_squad_files(trained_dir, tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": ex["id"], "question": ex["question"], "context": ex["context"]},
                                          ensure_ascii=False) for ex in KOREAN_EXAMPLES), encoding="utf-8")
    proc = _cli("predict", "--model", str(trained_dir), "--input", str(jsonl), "--output", str(tmp_path / "a.json"),
                "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert answers == {ex["id"]: ex["answers"]["text"][0] for ex in KOREAN_EXAMPLES}

    squad = {"data": [{"title": "t", "paragraphs": [{"context": CAPITAL["context"],
                                                      "qas": [{"id": "q1", "question": CAPITAL["question"]}]}]}]}
    path = tmp_path / "unlabelled.json"
    path.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    proc = _cli("predict", "--model", str(trained_dir), "--input", str(path), "--top_k", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = json.loads(proc.stdout)["q1"]
    assert len(top) == 2 and top[0]["text"] == "서울"


def test_cli_names_the_bad_line(trained_dir, tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"question": "q", "context": "c"}\n{"question": "no context"}\n', encoding="utf-8")
    proc = _cli("predict", "--model", str(trained_dir), "--input", str(jsonl), "--device", "cpu")
    assert proc.returncode != 0
    assert f"{jsonl}:2" in proc.stderr
