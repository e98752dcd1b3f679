"""kqa.metric: the official KorQuAD 1.0 EM / character F1, checked by hand and against a re-statement
of the official evaluation functions."""

from __future__ import annotations

import json
import logging
import random
import re
import string
import unicodedata
from collections import Counter

import pytest

from kqa.metric import (
    EvalResult,
    exact_match_score,
    f1_score,
    normalize_answer,
    score_files,
    score_predictions,
    squad_word_f1,
)

# --------------------------------------------------------------------------------------------------
# The official KorQuAD v1.0 evaluation functions, restated (regex substitutions one by one, as the
# official script does), used as the reference on random strings.
# --------------------------------------------------------------------------------------------------


def official_normalize_answer(s):
    def remove_(text):
        for pattern in ["'", '"', "《", "》", "<", ">", "〈", "〉", r"\(", r"\)", "‘", "’"]:
            text = re.sub(pattern, " ", text)
        return text

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_punc(lower(remove_(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    prediction_chars = [ch for tok in prediction_tokens for ch in tok]
    ground_truth_chars = [ch for tok in ground_truth_tokens for ch in tok]
    common = Counter(prediction_chars) & Counter(ground_truth_chars)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_chars)
    recall = 1.0 * num_same / len(ground_truth_chars)
    return (2 * precision * recall) / (precision + recall)


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(official_exact_match_score(prediction, gt) for gt in ground_truths)
                f1 += max(official_f1_score(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


ALPHABET = (
    list("서울특별시한국의수도는이다가나다 ")
    + list("'\"《》<>〈〉()‘’")
    + list(string.punctuation)
    + list("ABCabcXYZ 019")
    + ["\t", "\n", "\u3000", "·", "「", "」", "…", "～"]
)


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 14)))


# --------------------------------------------------------------------------------------------------
# Normalisation, rule by rule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ch", list("'\"《》<>〈〉()‘’"))
def test_each_official_quote_and_bracket_becomes_a_space(ch):
    # A space, not a deletion: the two words stay apart.
    assert normalize_answer(f"서울{ch}부산") == "서울 부산"
    assert exact_match_score(f"서울{ch}부산", "서울 부산") == 1.0
    assert exact_match_score(f"서울{ch}부산", "서울부산") == 0.0


@pytest.mark.parametrize("ch", [c for c in string.punctuation if c not in "'\"<>()"])
def test_each_other_ascii_punctuation_character_is_deleted(ch):
    assert normalize_answer(f"서울{ch}부산") == "서울부산"


def test_punctuation_outside_string_punctuation_is_kept():
    for ch in ["·", "「", "」", "…", "～", "、", "。"]:
        assert normalize_answer(f"서울{ch}부산") == f"서울{ch}부산"


def test_lowercase_and_whitespace_collapse():
    assert normalize_answer("  KorQuAD\t1.0 \n 데이터  ") == "korquad 10 데이터"
    assert normalize_answer("ÀÉ Σ") == "àé σ"  # Unicode lowercase, as str.lower
    assert normalize_answer("서울\u3000시") == "서울 시"  # ideographic space is whitespace
    assert normalize_answer(" ( ) ") == ""


def test_order_of_rules_quote_replaced_before_punctuation_removed():
    # "'" is in string.punctuation too; it must become a space first, not vanish.
    assert normalize_answer("조선'왕조") == "조선 왕조"
    # "-" is only deleted: the pieces join.
    assert normalize_answer("조선-왕조") == "조선왕조"


# --------------------------------------------------------------------------------------------------
# EM and F1
# --------------------------------------------------------------------------------------------------


def test_character_f1_versus_word_f1_on_korean():
    # pred 서울 (2 chars) vs gold 서울특별시 (5 chars): 2 common; P = 2/2 = 1, R = 2/5.
    expected = 2 * (1.0 * 0.4) / (1.0 + 0.4)
    assert expected == pytest.approx(0.5714285714)
    assert f1_score("서울", "서울특별시") == pytest.approx(expected)
    assert squad_word_f1("서울", "서울특별시") == 0.0  # different whitespace tokens
    assert exact_match_score("서울", "서울특별시") == 0.0
    # With a particle: 서울특별시 vs 서울특별시는 → P = 5/5, R = 5/6 → F1 = 10/11.
    assert f1_score("서울특별시", "서울특별시는") == pytest.approx(10 / 11)


def test_f1_counts_characters_as_a_multiset_and_ignores_spaces():
    # pred "가 가 나" → chars 가 가 나 (3); gold "가나다" → 가 나 다 (3); common 가 and 나: 2.
    assert f1_score("가 가 나", "가나다") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    # Spaces do not count: the same characters differently spaced are a perfect F1 but not EM.
    assert f1_score("서울 특별시", "서울특별시") == 1.0
    assert exact_match_score("서울 특별시", "서울특별시") == 0.0
    assert f1_score("부산", "서울") == 0.0
    assert f1_score("", "서울") == 0.0
    assert f1_score("", "") == 0.0  # the official script: no overlap → 0, even for two empty answers
    assert exact_match_score("", "") == 1.0


def test_nfd_prediction_matches_nfc_gold():
    gold = "한국어"
    prediction = unicodedata.normalize("NFD", gold)
    assert prediction != gold and len(prediction) > len(gold)
    assert exact_match_score(prediction, gold) == 1.0
    assert f1_score(prediction, gold) == 1.0
    # The official script on the raw strings would not match (its behaviour on NFC text is kept).
    assert official_exact_match_score(prediction, gold) is False


@pytest.mark.parametrize("seed", range(20))
def test_matches_official_functions_on_random_strings(seed):
    rng = random.Random(seed)
    for _ in range(200):
        a, b = random_text(rng), random_text(rng)
        if rng.random() < 0.3:  # related strings: overlaps and near-matches
            b = a[: rng.randint(0, len(a))] + random_text(rng)[:3]
        assert normalize_answer(a) == official_normalize_answer(a)
        assert exact_match_score(a, b) == float(official_exact_match_score(a, b))
        assert f1_score(a, b) == official_f1_score(a, b)


# --------------------------------------------------------------------------------------------------
# Totals
# --------------------------------------------------------------------------------------------------

EXAMPLES = [
    {"id": "q1", "answers": {"text": ["서울"], "answer_start": [0]}},
    {"id": "q2", "answers": {"text": ["부산광역시", "부산"], "answer_start": [0, 0]}},
    {"id": "q3", "answers": {"text": ["1446년"], "answer_start": [0]}},
    {"id": "q4", "answers": {"text": ["훈민정음"], "answer_start": [0]}},
]


def test_totals_are_percent_over_every_gold_question(caplog):
    predictions = {
        "q1": "서울",  # EM 1, F1 1
        "q2": "부산",  # best over golds: EM 1 (second answer), F1 1
        "q3": "1446",  # EM 0; chars 1 4 4 6 vs 1 4 4 6 년: P 1, R 4/5 → F1 8/9
        # q4 unanswered: 0 and counted
        "zz": "모름",  # not in the gold set: ignored, counted
    }
    with caplog.at_level(logging.WARNING, logger="kqa.metric"):
        result = score_predictions(EXAMPLES, predictions)
    assert isinstance(result, EvalResult)
    assert result.exact_match == pytest.approx(100 * 2 / 4)
    assert result.f1 == pytest.approx(100 * (1 + 1 + 8 / 9 + 0) / 4)
    assert (result.total, result.answered, result.unanswered, result.unknown_predictions) == (4, 3, 1, 1)
    assert "1 of 4 questions have no prediction" in caplog.text
    assert "1 predictions are for ids not in the gold set" in caplog.text
    assert result.to_dict()["f1"] == result.f1


def test_multi_answer_takes_the_best_per_metric_separately():
    examples = [{"id": "m", "answers": {"text": ["세종대왕", "세종"], "answer_start": [0, 0]}}]
    # EM is 1 against "세종"; F1 against "세종대왕" is 2·(1·0.5)/1.5 = 2/3 but against "세종" it is 1.
    result = score_predictions(examples, {"m": "세종"})
    assert (result.exact_match, result.f1) == (100.0, 100.0)
    result = score_predictions(examples, {"m": "세종대"})
    # vs 세종대왕: P 1, R 3/4 → 6/7; vs 세종: P 2/3, R 1 → 4/5. Best 6/7; EM 0.
    assert result.exact_match == 0.0 and result.f1 == pytest.approx(100 * 6 / 7)


def test_impossible_questions_score_only_an_empty_prediction():
    examples = [
        {"id": "i1", "answers": {"text": [], "answer_start": []}},
        {"id": "i2", "answers": {"text": [], "answer_start": []}},
    ]
    result = score_predictions(examples, {"i1": " ( ) ", "i2": "서울"})  # " ( ) " normalises to ""
    assert (result.exact_match, result.f1, result.impossible) == (50.0, 50.0, 2)


def test_datasets_input(korean_examples):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(korean_examples)
    predictions = {ex["id"]: ex["answers"]["text"][0] for ex in korean_examples}
    predictions[korean_examples[0]["id"]] = "아무것도"
    result = score_predictions(dataset, predictions)
    n = len(korean_examples)
    assert result.total == n and result.exact_match == pytest.approx(100 * (n - 1) / n)


def test_bad_predictions_and_examples_are_reported():
    with pytest.raises(ValueError, match="prediction for question 'q1' is a int"):
        score_predictions(EXAMPLES, {"q1": 3})
    with pytest.raises(ValueError, match="row 0 needs 'id' and 'answers'"):
        score_predictions([{"id": "x"}], {})
    with pytest.raises(ValueError, match=r"row 0 \(id 'x'\): answers must hold text strings"):
        score_predictions([{"id": "x", "answers": {"text": [1]}}], {})


# --------------------------------------------------------------------------------------------------
# The official file layout
# --------------------------------------------------------------------------------------------------


def official_layout() -> dict:
    return {
        "version": "KorQuAD_v1.0",
        "data": [
            {
                "title": "한국",
                "paragraphs": [
                    {
                        "context": "대한민국의 수도는 서울이다.",
                        "qas": [
                            {"id": "a1", "question": "수도는?", "answers": [{"text": "서울", "answer_start": 10}]},
                            {"id": "a2", "question": "나라는?", "answers": [{"text": "대한민국", "answer_start": 0}]},
                        ],
                    },
                ],
            },
            {
                "title": "세종",
                "paragraphs": [
                    {
                        "context": "세종대왕은 훈민정음을 창제하였다.",
                        "qas": [
                            {
                                "id": "b1",
                                "question": "누가?",
                                "answers": [
                                    {"text": "세종대왕", "answer_start": 0},
                                    {"text": "세종", "answer_start": 0},
                                ],
                            },
                            {"id": "b2", "question": "무엇을?", "answers": [{"text": "훈민정음", "answer_start": 6}]},
                        ],
                    },
                ],
            },
        ],
    }


def test_evaluate_files_matches_the_official_evaluate(tmp_path):
    gold = official_layout()
    predictions = {"a1": "서울이다", "a2": "《대한민국》", "b1": "세종대", "extra": "x"}  # b2 unanswered
    gold_file, pred_file = tmp_path / "dev.json", tmp_path / "predictions.json"
    gold_file.write_text(json.dumps(gold, ensure_ascii=False), encoding="utf-8")
    pred_file.write_text(json.dumps(predictions, ensure_ascii=False), encoding="utf-8")
    result = score_files(gold_file, pred_file)
    official = official_evaluate(gold["data"], predictions)
    assert result.exact_match == pytest.approx(official["exact_match"])
    assert result.f1 == pytest.approx(official["f1"])
    # By hand: a1 F1 2·1·(2/4)/(1.5) = 2/3, a2 EM 1, b1 F1 6/7 (vs 세종대왕), b2 0.
    assert result.exact_match == pytest.approx(100 * 1 / 4)
    assert result.f1 == pytest.approx(100 * (2 / 3 + 1 + 6 / 7 + 0) / 4)
    assert (result.total, result.answered, result.unanswered, result.unknown_predictions) == (4, 3, 1, 1)


def test_evaluate_files_on_random_predictions_matches_official(tmp_path):
    rng = random.Random(5)
    gold = official_layout()
    for trial in range(10):
        predictions = {}
        for article in gold["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    if rng.random() < 0.8:
                        answer = rng.choice(qa["answers"])["text"]
                        predictions[qa["id"]] = rng.choice([answer, answer[1:], f"({answer})", random_text(rng)])
        pred_file = tmp_path / f"p{trial}.json"
        pred_file.write_text(json.dumps(predictions, ensure_ascii=False), encoding="utf-8")
        gold_file = tmp_path / "gold.json"
        gold_file.write_text(json.dumps(gold, ensure_ascii=False), encoding="utf-8")
        result = score_files(gold_file, pred_file)
        official = official_evaluate(gold["data"], predictions)
        assert result.exact_match == pytest.approx(official["exact_match"])
        assert result.f1 == pytest.approx(official["f1"])


def test_evaluate_files_reports_bad_files(tmp_path):
    gold_file, pred_file = tmp_path / "gold.json", tmp_path / "pred.json"
    gold_file.write_text(json.dumps(official_layout(), ensure_ascii=False), encoding="utf-8")
    pred_file.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON object mapping question id"):
        score_files(gold_file, pred_file)
    pred_file.write_text('{"a1": ["서울"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="the prediction for question 'a1' is a list"):
        score_files(gold_file, pred_file)
    pred_file.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        score_files(gold_file, pred_file)
    pred_file.write_text("{}", encoding="utf-8")
    broken = official_layout()
    del broken["data"][1]["paragraphs"][0]["qas"][1]["id"]
    gold_file.write_text(json.dumps(broken, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\[1\]\.paragraphs\[0\]\.qas\[1\] has no 'id'"):
        score_files(gold_file, pred_file)
    with pytest.raises(FileNotFoundError, match="gold dataset file not found"):
        score_files(tmp_path / "missing.json", pred_file)


@pytest.mark.integration
def test_evaluate_files_on_shared_korquad_dev(data_dir, tmp_path):
    """Gold answers as predictions score 100; the official reference agrees on a perturbed set."""
    dev = data_dir / "korquad-1.0-sample" / "KorQuAD_v1.0_dev.json"
    gold = json.loads(dev.read_text(encoding="utf-8"))
    rng = random.Random(0)
    perfect, perturbed = {}, {}
    for article in gold["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]["text"]
                perfect[qa["id"]] = answer
                if rng.random() < 0.9:
                    perturbed[qa["id"]] = rng.choice([answer, answer[:-1], paragraph["context"][:20], f"'{answer}'"])
    for name, predictions in (("perfect", perfect), ("perturbed", perturbed)):
        pred_file = tmp_path / f"{name}.json"
        pred_file.write_text(json.dumps(predictions, ensure_ascii=False), encoding="utf-8")
        result = score_files(dev, pred_file)
        official = official_evaluate(gold["data"], predictions)
        assert result.total == 133
        assert result.exact_match == pytest.approx(official["exact_match"])
        assert result.f1 == pytest.approx(official["f1"])
    assert score_files(dev, tmp_path / "perfect.json").exact_match == 100.0


# --------------------------------------------------------------------------------------------------
# Bad bytes, byte-order marks and malformed predictions
# --------------------------------------------------------------------------------------------------


def _write_pair(tmp_path, gold: bytes | None = None, predictions: bytes | None = None):
    gold_file, pred_file = tmp_path / "gold.json", tmp_path / "pred.json"
    gold_file.write_bytes(gold if gold is not None else json.dumps(official_layout(), ensure_ascii=False).encode())
    pred_file.write_bytes(predictions if predictions is not None else b"{}")
    return gold_file, pred_file


def test_invalid_utf8_in_the_predictions_file_names_the_file_and_position(tmp_path):
    gold_file, pred_file = _write_pair(tmp_path, predictions=b'{\n  "a1": "\xec\x84\x9c\xff"\n}')
    with pytest.raises(ValueError) as err:
        score_files(gold_file, pred_file)
    message = str(err.value)
    assert not isinstance(err.value, UnicodeDecodeError)
    assert str(pred_file) in message and "not UTF-8" in message
    assert "line 2, column 11" in message and "byte offset 14" in message  # 서 is one character, three bytes


def test_invalid_utf8_in_the_gold_file_names_the_file_and_position(tmp_path):
    gold = json.dumps(official_layout(), ensure_ascii=False, indent=1).encode("utf-8")
    gold = gold.replace("서울이다".encode(), "서울이다".encode("cp949"), 1)  # a legacy Korean encoding
    gold_file, pred_file = _write_pair(tmp_path, gold=gold)
    with pytest.raises(ValueError) as err:
        score_files(gold_file, pred_file)
    assert not isinstance(err.value, UnicodeDecodeError)
    assert str(gold_file) in str(err.value) and "not UTF-8" in str(err.value)
    assert re.search(r"line \d+, column \d+", str(err.value))


def test_byte_order_mark_is_accepted_in_gold_and_predictions(tmp_path):
    bom = b"\xef\xbb\xbf"
    gold = bom + json.dumps(official_layout(), ensure_ascii=False).encode("utf-8")
    predictions = bom + json.dumps({"a1": "서울"}, ensure_ascii=False).encode("utf-8")
    gold_file, pred_file = _write_pair(tmp_path, gold=gold, predictions=predictions)
    result = score_files(gold_file, pred_file)
    assert (result.total, result.answered, result.exact_match) == (4, 1, 25.0)


def test_non_string_prediction_for_an_unknown_id_is_an_error_for_files_and_mappings(tmp_path):
    # The same malformed predictions must fail the same way whichever entry point reads them.
    predictions = {"a1": "서울", "not-in-gold": 7}
    gold_file, pred_file = _write_pair(tmp_path, predictions=json.dumps(predictions).encode())
    with pytest.raises(ValueError, match=r"prediction for question 'not-in-gold' is a int, not a string"):
        score_files(gold_file, pred_file)
    with pytest.raises(ValueError, match=r"prediction for question 'not-in-gold' is a int, not a string"):
        score_predictions(EXAMPLES, {"q1": "서울", "not-in-gold": 7})
    # A string for an unknown id is still only counted and logged.
    assert score_predictions(EXAMPLES, {"q1": "서울", "not-in-gold": "x"}).unknown_predictions == 1


def test_duplicate_id_in_the_predictions_file_is_an_error(tmp_path):
    gold_file, pred_file = _write_pair(tmp_path, predictions='{"a1": "서울", "a1": "부산"}'.encode())
    with pytest.raises(ValueError, match=rf"{re.escape(str(pred_file))}: .*'a1' appears more than once"):
        score_files(gold_file, pred_file)
