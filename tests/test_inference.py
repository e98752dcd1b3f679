"""QuestionAnswerer and the `kqa predict` command, on models whose answers are known by construction.

No test here relies on what a trained model happens to learn. `token_scoring_model` is a BERT with
hand-set weights whose start/end logits depend only on each token, so a test places the best span on
chosen tokens (e.g. "부" … "##산" of 부산) and checks exactly which characters of the context come
back. The batching test uses a seeded random-init BERT, whose real attention makes padding matter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch

from kqa.inference import Answer, QuestionAnswerer
from kqa.testing import KOREAN_EXAMPLES, korean_squad_json, tiny_bert_config, token_scoring_model

ROOT = Path(__file__).resolve().parent.parent
CAPITAL = KOREAN_EXAMPLES[0]
# Window geometry of the saved models: a 64-token window holds about 45 characters of context.
SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
MARK = 8.0  # the logit of a marked token; every other token's logit is 0
# One marked span per context: its first token scores MARK as a start, its last MARK as an end.
MARKED_SPANS = {"부산": ("부", "##산"), "영국": ("영", "##국"), "반포": ("반", "##포")}
EXPECTED = {"ko-1": "부산", "ko-2": "부산", "ko-3": "영국", "ko-4": "영국", "ko-5": "반포", "ko-6": "반포"}


def _save(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory, tokenizer=tokenizer, kqa_config=SETTINGS)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def marked_dir(tmp_path_factory, tokenizer):
    """A saved model that answers every context with its span of MARKED_SPANS (EXPECTED)."""
    for ex in KOREAN_EXAMPLES:  # each marked span occurs once in its context, and no other does
        assert [s for s in MARKED_SPANS if s in ex["context"]] == [EXPECTED[ex["id"]]]
        assert ex["context"].count(EXPECTED[ex["id"]]) == 1
    model = token_scoring_model(
        tokenizer, {s: MARK for s, _ in MARKED_SPANS.values()}, {e: MARK for _, e in MARKED_SPANS.values()}
    )
    return _save(model, tokenizer, tmp_path_factory.mktemp("marked") / "model")


@pytest.fixture(scope="module")
def qa(marked_dir):
    return QuestionAnswerer.from_pretrained(marked_dir, device="cpu")


@pytest.fixture(scope="module")
def busan_qa(tmp_path_factory, tokenizer):
    """Only 부산 is marked."""
    model = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})
    return QuestionAnswerer.from_pretrained(
        _save(model, tokenizer, tmp_path_factory.mktemp("busan") / "model"), device="cpu"
    )


@pytest.fixture(scope="module")
def random_qa(tmp_path_factory, tokenizer):
    """A seeded random-init BERT (CPU RNG: the same weights on every machine)."""
    from kqa.modeling import QuestionAnsweringModel

    torch.manual_seed(0)
    model = QuestionAnsweringModel.from_config(tiny_bert_config(len(tokenizer)))
    return QuestionAnswerer.from_pretrained(
        _save(model, tokenizer, tmp_path_factory.mktemp("random") / "model"), device="cpu"
    )


def test_the_answer_is_the_span_the_model_points_at(qa):
    answer = qa(CAPITAL["question"], CAPITAL["context"])
    assert isinstance(answer, Answer)
    start = CAPITAL["context"].index("부산")
    assert (answer.text, answer.start, answer.end) == ("부산", start, start + 2)
    assert CAPITAL["context"][answer.start : answer.end] == answer.text
    assert answer.score == pytest.approx(2 * MARK, abs=1e-4)  # start logit + end logit
    assert 0 < answer.probability <= 1


def test_every_example_gets_its_marked_span(qa):
    answers = qa([ex["question"] for ex in KOREAN_EXAMPLES], [ex["context"] for ex in KOREAN_EXAMPLES])
    for ex, answer in zip(KOREAN_EXAMPLES, answers):
        start = ex["context"].index(EXPECTED[ex["id"]])
        assert (answer.text, answer.start, answer.end) == (EXPECTED[ex["id"]], start, start + 2), ex["id"]


def test_top_k_lists_distinct_spans_best_first(qa):
    answers = qa(CAPITAL["question"], CAPITAL["context"], top_k=5)
    assert len(answers) == 5
    assert answers[0] == qa(CAPITAL["question"], CAPITAL["context"])  # same input, same numbers
    assert answers[0].text == "부산"
    scores = [a.score for a in answers]
    assert scores == sorted(scores, reverse=True)
    # Below the marked span come spans with one marked end: they score MARK, half as much.
    assert scores[1:] == pytest.approx([MARK] * 4, abs=1e-4)
    assert len({(a.start, a.end) for a in answers}) == 5
    for a in answers:
        assert CAPITAL["context"][a.start : a.end] == a.text


def test_batches_give_the_same_answers_as_single_questions(random_qa):
    questions = [ex["question"] for ex in KOREAN_EXAMPLES]
    contexts = [ex["context"] for ex in KOREAN_EXAMPLES]
    batched = random_qa(questions, contexts, top_k=3)
    single = [random_qa(q, c, top_k=3) for q, c in zip(questions, contexts)]
    compared = 0
    for b, s in zip(batched, single):
        # Padding in a batch changes the floating-point sums slightly (~1e-7), not the scores ...
        assert [a.score for a in b] == pytest.approx([a.score for a in s], abs=1e-4)
        # ... nor the best span, wherever it leads the runner-up by more than that noise.
        if s[0].score - s[1].score > 1e-3:
            assert (b[0].text, b[0].start, b[0].end) == (s[0].text, s[0].start, s[0].end)
            compared += 1
    assert compared >= len(KOREAN_EXAMPLES) // 2  # the span check above is not vacuous


def _long_context(where: str) -> tuple[str, int]:
    """The capital passage among ~10 windows of other passages (none holds 부 or 산): the context and
    the offset of 부산 in it."""
    pieces = [ex["context"] for ex in KOREAN_EXAMPLES[2:]] * 4
    assert not any("부" in p or "산" in p for p in pieces)
    at = {"middle": len(pieces) // 2, "end": len(pieces)}[where]
    before = " ".join(pieces[:at]) + " "
    after = "".join(" " + p for p in pieces[at:])
    return before + CAPITAL["context"] + after, len(before) + CAPITAL["context"].index("부산")


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_long_context_is_windowed_and_the_span_found_in_a_later_window(busan_qa, where):
    import datasets

    from kqa.features import FeatureConfig, prepare_eval_features

    context, start = _long_context(where)
    seen: list[list[int]] = []  # the unpadded token ids of every row the model scores

    def record(module, args, kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            seen.append(ids[: sum(mask)])

    hook = busan_qa.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        answer = busan_qa(CAPITAL["question"], context, top_k=1)
    finally:
        hook.remove()

    # The span comes back as the characters of the whole context, not of its window.
    assert (answer.text, answer.start, answer.end) == ("부산", start, start + 2)
    assert context[answer.start : answer.end] == "부산"
    assert answer.score == pytest.approx(2 * MARK, abs=1e-4)

    # Every window of the context was scored, and the span lies in windows after the first.
    windows, _ = prepare_eval_features(
        datasets.Dataset.from_list([{"id": "0", "question": CAPITAL["question"], "context": context}]),
        busan_qa.tokenizer,
        FeatureConfig(max_seq_length=64, doc_stride=16, max_query_length=16),
        cache=False,
    )
    assert len(windows) > 5
    assert sorted(seen) == sorted(windows["input_ids"])
    marker = busan_qa.tokenizer.convert_tokens_to_ids("부")
    holding = [k for k, ids in enumerate(windows["input_ids"]) if marker in ids]
    assert holding and holding[0] > 0
    if where == "middle":
        assert holding[-1] < len(windows) - 1


def test_the_span_is_found_whichever_window_holds_it(busan_qa):
    # Control for the test above: the same passage first, then among the others at every boundary.
    pieces = [ex["context"] for ex in KOREAN_EXAMPLES[2:]] * 4
    for at in range(0, len(pieces) + 1, 2):
        before = "".join(p + " " for p in pieces[:at])
        context = before + CAPITAL["context"] + "".join(" " + p for p in pieces[at:])
        answer = busan_qa(CAPITAL["question"], context)
        start = len(before) + CAPITAL["context"].index("부산")
        assert (answer.text, answer.start, answer.end) == ("부산", start, start + 2), at


def test_nfd_context_answers_are_slices_of_the_nfd_text(qa):
    context = unicodedata.normalize("NFD", CAPITAL["context"])
    assert len(context) > len(CAPITAL["context"])
    answer = qa(CAPITAL["question"], context)
    assert context[answer.start : answer.end] == answer.text
    assert unicodedata.normalize("NFC", answer.text) == "부산"
    assert answer.start == context.index(unicodedata.normalize("NFD", "부산"))


def test_bad_input_is_rejected(qa):
    with pytest.raises(ValueError, match="2 questions and 1 contexts"):
        qa(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="'context' is empty"):
        qa("질문", "   ")


def test_predict_rows_equals_the_evaluation_predictions(qa, marked_dir, tmp_path):
    from kqa.training.evaluation import evaluate_model

    data = tmp_path / "ko.json"
    data.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    evaluate_model(marked_dir, data, output_dir=tmp_path / "eval", disable_tqdm=True)
    expected = json.loads((tmp_path / "eval" / "predictions.json").read_text(encoding="utf-8"))
    predictions = qa.predict_rows(KOREAN_EXAMPLES)
    assert {k: p.text for k, p in predictions.items()} == expected == EXPECTED


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kqa", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )


def test_cli_answers_one_question(marked_dir):
    proc = _cli(
        "predict",
        "--model",
        str(marked_dir),
        "--question",
        CAPITAL["question"],
        "--context",
        CAPITAL["context"],
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout)
    start = CAPITAL["context"].index("부산")
    assert answer["text"] == "부산" and (answer["start"], answer["end"]) == (start, start + 2)


def test_cli_reads_jsonl_and_unlabelled_squad_files(marked_dir, qa, tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"id": ex["id"], "question": ex["question"], "context": ex["context"]}, ensure_ascii=False)
            for ex in KOREAN_EXAMPLES
        ),
        encoding="utf-8",
    )
    proc = _cli(
        "predict",
        "--model",
        str(marked_dir),
        "--input",
        str(jsonl),
        "--output_file",
        str(tmp_path / "a.json"),
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert answers == EXPECTED

    squad = {
        "data": [
            {
                "title": "t",
                "paragraphs": [{"context": CAPITAL["context"], "qas": [{"id": "q1", "question": CAPITAL["question"]}]}],
            }
        ]
    }
    path = tmp_path / "unlabelled.json"
    path.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    proc = _cli("predict", "--model", str(marked_dir), "--input", str(path), "--top_k", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = json.loads(proc.stdout)["q1"]
    in_process = qa(CAPITAL["question"], CAPITAL["context"], top_k=2)
    assert [(a["text"], a["start"], a["end"]) for a in top] == [(a.text, a.start, a.end) for a in in_process]
    assert top[0]["text"] == "부산"


def test_cli_names_the_bad_line(marked_dir, tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"question": "q", "context": "c"}\n{"question": "no context"}\n', encoding="utf-8")
    proc = _cli("predict", "--model", str(marked_dir), "--input", str(jsonl), "--device", "cpu")
    assert proc.returncode != 0
    assert f"{jsonl}:2" in proc.stderr


# ---- the null answer (models trained with version_2_with_negative) ---------------------------------
NULL = 10.0  # [CLS] start and end logit: null score 20 beats the 부산 span's 16


@pytest.fixture(scope="module")
def null_model(tokenizer):
    return token_scoring_model(tokenizer, {"부": MARK, "[CLS]": NULL}, {"##산": MARK, "[CLS]": NULL})


@pytest.fixture(scope="module")
def squad2_dir(tmp_path_factory, tokenizer, null_model):
    directory = tmp_path_factory.mktemp("squad2") / "model"
    null_model.save_pretrained(directory, tokenizer=tokenizer, kqa_config={**SETTINGS, "version_2_with_negative": True})
    return directory


def test_a_model_trained_with_null_answers_returns_the_null_answer(squad2_dir):
    qa = QuestionAnswerer.from_pretrained(squad2_dir, device="cpu")
    answer = qa(CAPITAL["question"], CAPITAL["context"])
    assert (answer.text, answer.start, answer.end) == ("", 0, 0) and answer.score == pytest.approx(2 * NULL)
    top = qa(CAPITAL["question"], CAPITAL["context"], top_k=2)
    assert [a.text for a in top] == ["", "부산"] and top[1].score == pytest.approx(2 * MARK)
    assert 0 < top[0].probability < 1 and top[0].probability > top[1].probability
    assert sum(a.probability for a in qa(CAPITAL["question"], CAPITAL["context"], top_k=50)) == pytest.approx(1.0)


def test_handle_impossible_answer_and_the_threshold_are_per_call(squad2_dir, tokenizer, null_model, tmp_path):
    qa = QuestionAnswerer.from_pretrained(squad2_dir, device="cpu")
    assert qa(CAPITAL["question"], CAPITAL["context"], handle_impossible_answer=False).text == "부산"
    # null - best span = 20 - 16 = 4: the null answer wins only when that exceeds the threshold
    assert qa(CAPITAL["question"], CAPITAL["context"], null_score_diff_threshold=3.9).text == ""
    assert qa(CAPITAL["question"], CAPITAL["context"], null_score_diff_threshold=4.1).text == "부산"
    assert qa(CAPITAL["question"], CAPITAL["context"]).text == ""  # the per-call settings did not stick
    # a model saved without null answers answers by default, and lets the null answer compete on request
    squad1 = QuestionAnswerer.from_pretrained(_save(null_model, tokenizer, tmp_path / "squad1"), device="cpu")
    assert squad1(CAPITAL["question"], CAPITAL["context"]).text == "부산"
    assert squad1(CAPITAL["question"], CAPITAL["context"], handle_impossible_answer=True).text == ""


def test_cli_returns_the_null_answer_and_takes_the_null_flags(squad2_dir):
    base = [
        "predict",
        "--model",
        str(squad2_dir),
        "--question",
        CAPITAL["question"],
        "--context",
        CAPITAL["context"],
        "--device",
        "cpu",
    ]
    proc = _cli(*base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["text"] == ""
    proc = _cli(*base, "--handle_impossible_answer", "false")
    assert json.loads(proc.stdout)["text"] == "부산"
    proc = _cli(*base, "--null_score_diff_threshold", "4.1", "--top_k", "2")
    assert [a["text"] for a in json.loads(proc.stdout)] == ["부산", ""]


@pytest.mark.parametrize(
    "question, context, message",
    [
        (None, CAPITAL["context"], "question: expected a string"),
        (CAPITAL["question"], None, "'context': expected a string"),
        ("수도는\ud800?", CAPITAL["context"], "'question': holds a lone surrogate"),
        (CAPITAL["question"], "서울\udc00", "'context': holds a lone surrogate"),
        ([CAPITAL["question"], 3], CAPITAL["context"], "row 1 .*'question': expected a string"),
    ],
)
def test_bad_questions_and_contexts_name_the_row_and_the_problem(qa, question, context, message):
    with pytest.raises(ValueError, match=message):
        qa(question, context)


def test_bad_top_k_is_rejected(qa):
    for top_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="top_k"):
            qa(CAPITAL["question"], CAPITAL["context"], top_k=top_k)


def test_a_batch_with_a_context_of_control_characters(qa):
    """A context of control characters (which some tokenizers normalise to nothing: a window without
    context tokens) does not disturb the other questions of the batch, in either order. The
    post-processor's handling of such windows is tested in test_postprocess.py."""
    for order in (1, -1):
        questions, contexts = ["무엇?", CAPITAL["question"]][::order], ["\x7f\x01", CAPITAL["context"]][::order]
        answers = dict(zip(contexts, qa(questions, contexts)))
        assert answers[CAPITAL["context"]].text == "부산"
        odd = answers["\x7f\x01"]
        assert odd.text == "\x7f\x01"[odd.start : odd.end]


def test_a_call_draws_no_progress_bar(qa, capfd):
    capfd.readouterr()
    assert qa("대한민국의 수도는 어디인가?", KOREAN_EXAMPLES[0]["context"]).text
    captured = capfd.readouterr()
    assert "features" not in captured.err and "%|" not in captured.err, captured.err
