"""Unanswerable questions built from answerable ones (`kqa.negatives`): which passage, which questions,
what is dropped and counted, the training config and inputs, the features, `kqa make-negatives`."""

from __future__ import annotations

import json
import logging
import unicodedata

import datasets
import pytest

from kqa.data import load_data_file, validate_examples
from kqa.features import FeatureConfig, prepare_train_features
from kqa.negatives import (
    ANSWER_IN_PASSAGE,
    NO_OTHER_ARTICLE,
    NegativeSettings,
    add_negatives,
    build_negatives,
    sample_questions,
)
from kqa.testing import korean_squad_json
from kqa.training.config import TrainConfig

BUSAN = "부산은 대한민국 제2의 도시이며 가장 큰 항구 도시이다."
INCHEON = "인천은 대한민국의 항구 도시로, 인천국제공항이 있는 곳이다."
SEOUL = "서울은 대한민국의 수도이다."
NEWTON = "아이작 뉴턴은 17세기 영국의 수학자이자 물리학자였다."


def _row(qid: str, title: str, context: str, question: str, answer: str) -> dict:
    start = context.index(answer)
    return {
        "id": qid,
        "title": title,
        "context": context,
        "question": question,
        "answers": {"text": [answer], "answer_start": [start]},
        "is_impossible": False,
    }


def _hard_rows() -> list[dict]:
    """One question whose BM25-best passage is certain: 인천's shares 대한민국, 항구, 도시; 서울's only 대한민국;
    뉴턴's nothing; a second passage of its own article (부산) shares even more and must not be chosen."""
    return [
        _row("q-busan", "부산", BUSAN, "대한민국에서 가장 큰 항구 도시는?", "부산"),
        _row(
            "q-busan-2",
            "부산",
            "부산 항구는 대한민국 가장 큰 항구 도시의 항구이다.",
            "부산 항구는 어떤 항구인가?",
            "대한민국",
        ),
        _row("q-incheon", "인천", INCHEON, "인천국제공항이 있는 도시는?", "인천"),
        _row("q-seoul", "서울", SEOUL, "대한민국의 수도는?", "서울"),
        _row("q-newton", "뉴턴", NEWTON, "뉴턴은 몇 세기 사람인가?", "17세기"),
    ]


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def _by_source(negatives: list[dict]) -> dict[str, dict]:
    return {row["id"].removesuffix("-neg"): row for row in negatives}


def test_a_hard_negative_is_the_bm25_best_passage_of_another_article():
    negatives, report = build_negatives(_hard_rows(), NegativeSettings(ratio=1.0, kind="hard"))
    busan = _by_source(negatives)["q-busan"]
    assert busan["context"] == INCHEON and busan["title"] == "인천"
    assert busan["id"] == "q-busan-neg" and busan["is_impossible"] is True
    assert busan["answers"] == {"text": [], "answer_start": []}
    assert busan["question"] == "대한민국에서 가장 큰 항구 도시는?"
    # 뉴턴's question shares no term with any other article: random instead, counted.
    assert report.num_hard_fallbacks == 1
    assert _by_source(negatives)["q-newton"]["title"] != "뉴턴"


def test_a_negative_never_gets_its_own_article_nor_a_passage_holding_its_answer():
    # 서울's passage holds the answer of q-capital in NFD: dropped, as in NFC.
    rows = [
        _row("q-capital", "한국", "한국의 수도는 서울이다.", "한국의 수도는?", "서울"),
        _row("q-capital-2", "한국", "한국의 수도는 서울이다.", "한국의 가장 큰 도시는?", "서울"),
        _row("q-seoul", "서울", _nfd("서울은 큰 도시이다."), "서울은 어떤 도시인가?", _nfd("큰 도시")),
        _row("q-newton", "뉴턴", NEWTON, "뉴턴은 어느 나라 사람인가?", "영국"),
    ]
    dropped_answer = 0
    for seed in range(20):
        negatives, report = build_negatives(rows, NegativeSettings(ratio=1.0, kind="random", seed=seed))
        gold = {row["id"]: row for row in rows}
        for neg in negatives:
            source = gold[neg["id"].removesuffix("-neg")]
            assert neg["title"] != source["title"]
            nfc = unicodedata.normalize("NFC", neg["context"])
            assert not any(answer in nfc for answer in source["answers"]["text"])
        assert report.num_added + len(report.dropped) == report.num_sampled == 4
        dropped_answer += report.counts()["num_dropped_answer_in_passage"]
    assert dropped_answer > 0  # the answer-holding passage was drawn, and dropped


def test_a_set_of_one_article_gets_no_negatives_and_says_why():
    rows = [_row(f"q{i}", "한국", "한국의 수도는 서울이다.", f"질문 {i}?", "서울") for i in range(3)]
    negatives, report = build_negatives(rows, NegativeSettings(ratio=1.0, kind="random"))
    assert negatives == []
    assert report.dropped == [(f"q{i}", NO_OTHER_ARTICLE) for i in range(3)]
    assert "0 random negatives added" in report.summary() and f"3 {NO_OTHER_ARTICLE}" in report.summary()


def _many_rows(n: int = 20) -> list[dict]:
    # 값1번 is not inside 값11번: no passage holds another question's answer.
    return [_row(f"q{i}", f"문서{i}", f"문서{i}의 내용은 값{i}번이다.", f"문서{i}의?", f"값{i}번") for i in range(n)]


@pytest.mark.parametrize("ratio, expected", [(0.0, 0), (0.2, 4), (0.25, 5), (0.33, 7), (1.0, 20)])
def test_the_ratio_is_a_share_of_the_answerable_questions(ratio, expected):
    rows = _many_rows() + [{**_row("x", "빈", "아무것도 없다.", "무엇?", "없다"), "is_impossible": True}]
    rows[-1]["answers"] = {"text": [], "answer_start": []}
    negatives, report = build_negatives(rows, NegativeSettings(ratio=ratio, kind="random"))
    assert report.num_answerable == 20 and report.num_sampled == expected == len(negatives)
    assert "x-neg" not in {n["id"] for n in negatives}  # an unanswerable question gets none


def test_the_sample_and_the_passages_are_deterministic_by_seed():
    rows = _many_rows()
    first, _ = build_negatives(rows, NegativeSettings(ratio=0.5, kind="random", seed=7))
    again, _ = build_negatives(rows, NegativeSettings(ratio=0.5, kind="random", seed=7))
    other, _ = build_negatives(rows, NegativeSettings(ratio=0.5, kind="random", seed=8))
    assert first == again
    assert first != other
    assert sample_questions(rows, NegativeSettings(0.5, seed=7)) != sample_questions(
        rows, NegativeSettings(0.5, seed=8)
    )


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="negative_ratio must be in"):
        NegativeSettings(ratio=1.5)
    with pytest.raises(ValueError, match="negative_kind must be one of hard, random"):
        NegativeSettings(ratio=0.2, kind="dense")


def test_add_negatives_appends_rows_of_the_same_schema_and_reports():
    examples, _ = validate_examples(datasets.Dataset.from_list(_hard_rows()), source="hand")
    out, report = add_negatives(examples, NegativeSettings(ratio=1.0, kind="hard"), source="hand")
    assert out.features == examples.features
    assert len(out) == 5 + report.num_added
    assert sum(out["is_impossible"]) == report.num_added
    counts = report.counts()
    assert counts["num_sampled"] == 5 and counts["num_added"] + counts["num_dropped"] == 5
    assert report.summary().startswith(f"hand: {report.num_added} hard negatives added (ratio 1.0, seed 42) to 5")
    assert all(reason == ANSWER_IN_PASSAGE for _, reason in report.dropped)


def test_a_negative_id_already_in_the_set_is_an_error():
    rows = _many_rows(4) + [{**_row("q0-neg", "다른", "다른 문서이다.", "무엇?", "다른")}]
    examples = datasets.Dataset.from_list(rows)
    with pytest.raises(ValueError, match="hand: negative id 'q0-neg' is already a question id"):
        add_negatives(examples, NegativeSettings(ratio=1.0, kind="random"), source="hand")


def test_train_features_label_negatives_with_the_cls_index(tiny_tokenizer):
    examples, _ = validate_examples(datasets.Dataset.from_list(_hard_rows()), source="hand")
    examples, report = add_negatives(examples, NegativeSettings(ratio=1.0, kind="hard"), source="hand")
    config = FeatureConfig(max_seq_length=64, doc_stride=16, max_query_length=16)
    features, feature_report = prepare_train_features(examples, tiny_tokenizer, config)
    cls = tiny_tokenizer.cls_token_id
    negative_rows = [f for f in features if f["example_id"].endswith("-neg")]
    assert negative_rows and feature_report.num_unanswerable_examples == report.num_added
    for f in negative_rows:
        position = f["input_ids"].index(cls)
        assert f["start_positions"] == f["end_positions"] == position
    answered = [f for f in features if not f["example_id"].endswith("-neg")]
    assert any(f["start_positions"] != f["input_ids"].index(cls) for f in answered)


def test_the_config_needs_version_2_with_negative(tmp_path):
    with pytest.raises(ValueError, match="negative_ratio=0.25 .* needs version_2_with_negative: true"):
        TrainConfig.from_flat(train_files=["t.json"], negative_ratio=0.25)
    with pytest.raises(ValueError, match="negative_kind must be one of"):
        TrainConfig.from_flat(
            train_files=["t.json"], version_2_with_negative=True, negative_ratio=0.25, negative_kind="x"
        )
    cfg = TrainConfig.from_flat(train_files=["t.json"], version_2_with_negative=True, negative_ratio=0.25)
    assert (cfg.negative_ratio, cfg.negative_kind) == (0.25, "hard")


def test_the_flags_and_yaml_name_the_negatives(tmp_path):
    from kqa.training.config import parse_config

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "train_files: [t.json]\nversion_2_with_negative: true\nnegative_ratio: 0.2\n", encoding="utf-8"
    )
    cfg = parse_config(["--config", str(yaml_file), "--negative_kind", "random"])
    assert (cfg.negative_ratio, cfg.negative_kind, cfg.postprocess.version_2_with_negative) == (0.2, "random", True)


def test_the_training_inputs_add_the_negatives_and_log_the_report(tmp_path, korean_examples, caplog):
    from kqa.training.inputs import load_train_examples

    data_file = tmp_path / "train.json"
    data_file.write_text(json.dumps(korean_squad_json(korean_examples), ensure_ascii=False), encoding="utf-8")
    cfg = TrainConfig.from_flat(
        train_files=[str(data_file)], version_2_with_negative=True, negative_ratio=0.5, negative_kind="random"
    )
    with caplog.at_level(logging.INFO, logger="kqa.training.inputs"):
        examples = load_train_examples(cfg)
    added = sum(examples["is_impossible"])
    assert len(examples) == 6 + added and added + caplog.text.count("no negative:") == 3
    assert f"{added} random negatives added (ratio 0.5, seed 42) to 6 questions; 3 sampled" in caplog.text


def test_make_negatives_writes_a_squad_2_file_deterministically(tmp_path, korean_squad_file, capsys):
    from kqa.cli import main

    outputs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outputs:
        argv = ["make-negatives", "--data_file", str(korean_squad_file), "--output_file", str(out)]
        assert main([*argv, "--negative_ratio", "1", "--negative_kind", "random", "--seed", "3"]) == 0
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    printed = capsys.readouterr().out
    examples, report = load_data_file(outputs[0])
    assert json.loads(outputs[0].read_text(encoding="utf-8"))["version"] == "v2.0"
    assert report.num_impossible == len(examples) - 6 > 0
    assert f"{report.num_impossible} random negatives added (ratio 1.0, seed 3) to 6 questions" in printed
    assert (
        main(
            [
                "make-negatives",
                "--data_file",
                str(outputs[0]),
                "--output_file",
                str(outputs[0]),
                "--negative_ratio",
                "1",
            ]
        )
        == 2
    )
