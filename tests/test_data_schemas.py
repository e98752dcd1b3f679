"""Data by schema: KLUE-MRC recognised as is, user column mappings, flat rows in JSON / JSONL / CSV /
Parquet, hub datasets with a config offline from the hub cache, and scores per question_type."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kqa.data import DataValidationError, load_data_file, load_examples, load_squad_json, validate_examples
from kqa.metric import score_predictions
from kqa.testing import KOREAN_EXAMPLES, build_hub_cache, reset_accelerate_state
from kqa.training.config import TrainConfig, parse_config
from kqa.training.tracking import evaluation_metrics

ROOT = Path(__file__).resolve().parent.parent
QUESTION_TYPES = {"ko-1": 1, "ko-2": 1, "ko-3": 2, "ko-4": 2, "ko-5": 1, "ko-6": 2}
UNANSWERABLE = {
    "guid": "klue-mrc-7",
    "title": "뉴턴",
    "context": KOREAN_EXAMPLES[2]["context"],
    "question": "뉴턴은 어느 대학의 총장이었는가?",
    "answers": {"text": [], "answer_start": []},
    "is_impossible": True,
    "question_type": 3,
    "news_category": "과학",
    "source": "hankyung",
}


def klue_rows() -> list[dict]:
    """KLUE-MRC-shaped rows: the hand-written Korean examples plus one unanswerable question."""
    rows = [
        {
            "guid": ex["id"],
            "title": ex["title"],
            "context": ex["context"],
            "question": ex["question"],
            "answers": ex["answers"],
            "is_impossible": False,
            "question_type": QUESTION_TYPES[ex["id"]],
            "news_category": "사회",
            "source": "acrofan",
        }
        for ex in KOREAN_EXAMPLES
    ]
    return [*rows, UNANSWERABLE]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict], json_cells: tuple[str, ...] = ("answers",)) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if k in json_cells else v for k, v in row.items()})
    return path


# --------------------------------------------------------------------------------------------------
# KLUE-MRC
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [write_jsonl, write_parquet, write_csv], ids=["jsonl", "parquet", "csv"])
def test_klue_mrc_rows_load_as_they_are(tmp_path, write):
    suffix = {write_jsonl: ".jsonl", write_parquet: ".parquet", write_csv: ".csv"}[write]
    examples, report = load_data_file(write(tmp_path / f"klue{suffix}", klue_rows()))
    assert examples["id"] == [*QUESTION_TYPES, "klue-mrc-7"]
    last = examples[-1]
    assert last["is_impossible"] is True and last["answers"] == {"text": [], "answer_start": []}
    assert examples[0]["answers"] == {"text": ["서울"], "answer_start": [10]}
    assert [str(t) for t in examples["question_type"]] == ["1", "1", "2", "2", "1", "2", "3"]
    assert examples["news_category"][-1] == "과학" and examples["source"][0] == "acrofan"
    assert report.carried == ("question_type", "news_category", "source")
    assert report.columns == "klue-mrc: guid → id; is_impossible kept; carried: question_type, news_category, source"
    assert (report.num_questions, report.num_kept, report.num_impossible) == (7, 7, 1)
    assert report.summary().endswith(f"[{report.columns}]")


@pytest.mark.parametrize("write", [write_jsonl, write_parquet, write_csv], ids=["jsonl", "parquet", "csv"])
def test_klue_mrc_unanswerable_rows_that_carry_an_answer_stay_unanswerable(tmp_path, write):
    """KLUE-MRC's unanswerable rows may carry the answer a reader might find: the question is kept as
    unanswerable, without it, and the load report counts what was dropped."""
    rows = klue_rows()
    rows[-1] = {**UNANSWERABLE, "answers": {"text": ["케임브리지"], "answer_start": [0]}}
    suffix = {write_jsonl: ".jsonl", write_parquet: ".parquet", write_csv: ".csv"}[write]
    examples, report = load_data_file(write(tmp_path / f"klue{suffix}", rows))
    last = examples[-1]
    assert last["id"] == "klue-mrc-7" and last["is_impossible"] is True
    assert last["answers"] == {"text": [], "answer_start": []}
    assert (report.num_kept, report.num_impossible, report.num_answers_dropped) == (7, 1, 1)
    [dropped] = report.dropped_answers
    assert (
        dropped.id == "klue-mrc-7"
        and dropped.location.describe()
        == {
            write_jsonl: "line 7",
            write_parquet: "row 6",
            write_csv: "line 8",
        }[write]
    )
    assert "1 answers of 1 questions marked unanswerable dropped" in report.summary()


def test_scores_are_broken_down_by_question_type(tmp_path):
    examples, _ = load_data_file(write_jsonl(tmp_path / "klue.jsonl", klue_rows()))
    predictions = {
        "ko-1": "서울",  # type 1: right
        "ko-2": "부산광역시",  # type 1: EM 0; F1: 2 shared characters, P 2/5, R 2/2 → 4/7
        # ko-5 (type 1) unanswered: 0
        "ko-3": "영국",
        "ko-4": "17세기",
        "ko-6": "1446년",  # type 2: all right
        "klue-mrc-7": "",  # type 3: the null answer, right
    }
    result = score_predictions(examples, predictions)
    groups = result.breakdown["question_type"]
    assert sorted(groups) == ["1", "2", "3"]
    assert (groups["1"].total, groups["2"].total, groups["3"].total) == (3, 3, 1)
    assert groups["1"].exact_match == pytest.approx(100 / 3)
    assert groups["1"].f1 == pytest.approx(100 * (1 + 4 / 7) / 3)
    assert (groups["2"].exact_match, groups["2"].f1, groups["3"].exact_match) == (100.0, 100.0, 100.0)
    assert result.exact_match == pytest.approx(100 * 5 / 7)
    metrics = evaluation_metrics({"klue": type("E", (), {"result": result, "loss": None})()})
    assert metrics["klue/question_type=1/f1"] == pytest.approx(100 * (1 + 4 / 7) / 3)
    assert metrics["klue/question_type=3/exact_match"] == 100.0
    assert result.to_dict()["breakdown"]["question_type"]["2"] == {"exact_match": 100.0, "f1": 100.0, "total": 3}


def test_without_a_breakdown_column_there_is_no_breakdown(korean_squad_file):
    examples, _ = load_squad_json(korean_squad_file)
    assert score_predictions(examples, {"ko-1": "서울"}).breakdown == {}


def test_klue_mrc_trains_and_evaluates_per_question_type(tmp_path, tiny_tokenizer):
    import torch
    from transformers import BertModel

    from kqa.testing import tiny_bert_config
    from kqa.training.evaluation import evaluate_model
    from kqa.training.recipe import QATrainingRecipe

    torch.manual_seed(0)
    backbone = tmp_path / "backbone"
    BertModel(tiny_bert_config(len(tiny_tokenizer)), add_pooling_layer=False).save_pretrained(backbone)
    tiny_tokenizer.save_pretrained(backbone)
    train_file = write_jsonl(tmp_path / "train.jsonl", klue_rows())
    dev_file = write_parquet(tmp_path / "dev.parquet", klue_rows())
    cfg = TrainConfig.from_flat(
        model_name_or_path=str(backbone),
        train_files=[str(train_file)],
        validation_files=[f"klue={dev_file}"],
        dataset_name=None,
        max_seq_length=64,
        doc_stride=16,
        max_query_length=16,
        per_device_train_batch_size=4,
        max_train_steps=4,
        version_2_with_negative=True,
        mixed_precision="no",
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        output_dir=str(tmp_path / "run"),
        disable_tqdm=True,
    )
    try:
        result = QATrainingRecipe(cfg).setup().train()
    finally:
        reset_accelerate_state()
    metrics = result.final_metrics
    for value in ("1", "2", "3"):
        assert f"klue/question_type={value}/f1" in metrics
    weighted = (3 * metrics["klue/question_type=1/f1"] + 3 * metrics["klue/question_type=2/f1"]) / 7
    assert metrics["klue/f1"] == pytest.approx(weighted + metrics["klue/question_type=3/f1"] / 7)

    csv_file = write_csv(tmp_path / "dev.csv", klue_rows())
    try:
        evaluation = evaluate_model(tmp_path / "run" / "best", csv_file, disable_tqdm=True)
    finally:
        reset_accelerate_state()
    groups = evaluation.result.breakdown["question_type"]
    assert {k: g.total for k, g in groups.items()} == {"1": 3, "2": 3, "3": 1}
    assert evaluation.result.f1 == pytest.approx(metrics["klue/f1"])


# --------------------------------------------------------------------------------------------------
# Formats: the same examples from every file format
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_slice(data_dir):
    """The first 50 questions of the shared KorQuAD dev sample, as loaded from its SQuAD JSON."""
    examples, _ = load_squad_json(data_dir / "korquad-1.0-sample" / "KorQuAD_v1.0_dev.json")
    return examples.select(range(50))


def _flat_answer_rows(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        (text,), (start,) = row["answers"]["text"], row["answers"]["answer_start"]
        flat = {k: v for k, v in row.items() if k != "answers"}
        out.append({**flat, "answer_text": text, "answer_start": start})
    return out


FORMATS = {
    "jsonl": lambda path, rows: write_jsonl(path.with_suffix(".jsonl"), rows),
    "parquet": lambda path, rows: write_parquet(path.with_suffix(".parquet"), rows),
    "csv-json-answers": lambda path, rows: write_csv(path.with_suffix(".csv"), rows),
    "csv-flat-answers": lambda path, rows: write_csv(path.with_suffix(".csv"), _flat_answer_rows(rows), ()),
    "json-list": lambda path, rows: _write_json(path, rows),
    "json-data-rows": lambda path, rows: _write_json(path, {"data": rows}),
}


def _write_json(path: Path, document) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_loads_the_same_examples_as_the_squad_json(tmp_path, dev_slice, kind):
    path = FORMATS[kind](tmp_path / "dev", dev_slice.to_list())
    examples, report = load_data_file(path)
    assert examples.features == dev_slice.features
    assert examples.to_list() == dev_slice.to_list()
    assert (report.num_questions, report.num_kept, report.num_answers_rejected) == (50, 50, 0)
    assert report.source_kind == "file" and report.carried == ()


BAD_ROWS = {
    "jsonl": ("jsonl", r"bad\.jsonl: line 3 \(id '.+'\): answer 0: 'answer_start' must be an integer, got 'x'"),
    "parquet": ("parquet", r"bad\.parquet: row 2 \(id '.+'\): field 'question' is empty"),
    "csv-json-answers": ("csv", r"bad\.csv: line 4 \(id '.+'\): the 'answers' cell is not valid JSON"),
    "json-list": ("json", r"bad\.json: \[2\] \(id '.+'\): field 'context' must be a string, got int"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_a_bad_row_is_named_by_file_and_record(tmp_path, dev_slice, kind):
    rows = dev_slice.select(range(5)).to_list()
    suffix, expected = BAD_ROWS[kind]
    if kind == "jsonl":
        rows[2]["answers"]["answer_start"] = ["x"]
    elif kind == "parquet":
        rows[2]["question"] = ""
    elif kind == "json-list":
        rows[2]["context"] = 7
    path = FORMATS[kind](tmp_path / "bad", rows)
    if kind == "csv-json-answers":
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[3] = lines[3].replace('{""text""', '{""text"" ', 1).replace("]}", "]", 1)  # line 4: a broken cell
        path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataValidationError, match=expected):
        load_data_file(path)


def test_csv_cells_keep_line_separators_other_than_newlines(tmp_path):
    """\u2028, \x85, \x0c ... end a line for str.splitlines but not for CSV: csv writers leave them unquoted."""
    context = "대한민국의\u2028수도는\x85서울\x0c이다."
    rows = [
        {"id": "q1", "context": context, "question": "수도는?", "answer_text": "서울", "answer_start": 10},
        {"id": "q2", "context": "x", "question": "y", "answer_text": "", "answer_start": ""},
    ]
    examples, report = load_data_file(write_csv(tmp_path / "separators.csv", rows, json_cells=()))
    assert examples["context"] == [context, "x"] and examples[0]["answers"]["text"] == ["서울"]
    assert not report.has_problems
    bad = tmp_path / "bad.csv"
    bad.write_text("id,context,question,answer_text,answer_start\nq1,가\u2028나,물음,가,0\nq2,x,y\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"bad\.csv: line 3: 3 cells, the header has 5"):
        load_data_file(bad)


def test_csv_cells_are_text_and_booleans_and_starts_are_read_from_it(tmp_path):
    path = tmp_path / "flat.csv"
    path.write_text(
        "id,context,question,answer_text,answer_start,is_impossible\n"
        "q1,서울은 수도다.,수도는?,서울,0,false\n"
        '002,"서울은\n수도다.",무엇이 없나?,,,TRUE\n',
        encoding="utf-8",
    )
    examples, report = load_data_file(path)
    assert examples["id"] == ["q1", "002"]  # an id of digits stays text
    assert examples["context"][1] == "서울은\n수도다."
    assert examples["is_impossible"] == [False, True]
    assert examples["answers"][1] == {"text": [], "answer_start": []}
    assert report.columns.startswith("flat-answers: answer_text + answer_start → answers (one per row)")
    # The quoted context of row 002 spans lines 3 and 4, so the next record starts on line 5.
    path.write_text(path.read_text(encoding="utf-8") + "q3,서울,어디?,서울,zero,false\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"flat\.csv: line 5 \(id 'q3'\): answer 0: 'answer_start'"):
        load_data_file(path)


def test_unknown_formats_and_squad_files_with_a_mapping_are_refused(tmp_path, korean_squad_file):
    odd = tmp_path / "dev.tsv"
    odd.write_text("id\tcontext\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"dev\.tsv: unknown data file format '\.tsv'; kqa reads \.json"):
        load_data_file(odd)
    with pytest.raises(ValueError, match="column mapping applies to flat rows"):
        load_data_file(korean_squad_file, columns={"id": "qid"})
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "absent.parquet")


# --------------------------------------------------------------------------------------------------
# Column mappings
# --------------------------------------------------------------------------------------------------

MAPPING = {"id": "qid", "context": "passage", "question": "query", "answer_text": "ans", "answer_start": "pos"}


def _renamed_rows() -> list[dict]:
    return [
        {
            "qid": ex["id"],
            "passage": ex["context"],
            "query": ex["question"],
            "ans": ex["answers"]["text"][0],
            "pos": ex["answers"]["answer_start"][0],
            "topic": ex["title"],
        }
        for ex in KOREAN_EXAMPLES
    ]


def test_a_column_mapping_reads_another_schema(tmp_path):
    path = write_jsonl(tmp_path / "renamed.jsonl", _renamed_rows())
    examples, report = load_data_file(path, columns={**MAPPING, "title": "topic"})
    assert examples["id"] == [ex["id"] for ex in KOREAN_EXAMPLES]
    assert examples["answers"] == [ex["answers"] for ex in KOREAN_EXAMPLES]
    assert examples["title"] == [ex["title"] for ex in KOREAN_EXAMPLES]
    assert report.columns.startswith(
        "mapping: qid → id; passage → context; query → question; ans → answer_text; pos → answer_start; "
        "topic → title; answer_text + answer_start → answers (one per row); no is_impossible column"
    )
    # Without the title mapped, `topic` is carried along.
    examples, report = load_data_file(path, columns=MAPPING)
    assert report.carried == ("topic",) and examples["topic"][0] == "대한민국"


def test_a_wrong_mapping_names_the_file_and_the_column(tmp_path):
    path = write_jsonl(tmp_path / "renamed.jsonl", _renamed_rows())
    with pytest.raises(DataValidationError, match=r"renamed\.jsonl: column 'passages' \(for context\) not found"):
        load_data_file(path, columns={**MAPPING, "context": "passages"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['contxt'\]"):
        load_data_file(path, columns={**MAPPING, "contxt": "passage"})
    with pytest.raises(DataValidationError, match=r"renamed\.jsonl: missing columns \['id', 'context', 'question'"):
        load_data_file(path)  # no mapping: no known schema fits
    with pytest.raises(DataValidationError, match=r"no column for answers \(or answer_text and answer_start\)"):
        load_data_file(path, columns={"id": "qid", "context": "passage", "question": "query", "answer_text": "ans"})


def test_a_mapping_applies_to_datasets_too():
    import datasets

    rows = datasets.Dataset.from_list(_renamed_rows())
    examples, _ = validate_examples(rows, "rows", columns=MAPPING)
    assert examples["answers"][4] == {"text": ["훈민정음"], "answer_start": [13]}


def test_training_takes_a_mapping_from_flags_and_yaml(tmp_path):
    args = ["--train_files", "t.csv", "--column_mapping", "id=qid,context=passage", "--dataset_name", "none"]
    assert parse_config(args).column_mapping == {"id": "qid", "context": "passage"}
    config = tmp_path / "c.yaml"
    config.write_text("train_files: [t.jsonl]\ncolumn_mapping:\n  id: qid\n  question: query\n", encoding="utf-8")
    assert parse_config(["--config", str(config)]).column_mapping == {"id": "qid", "question": "query"}
    with pytest.raises(SystemExit):
        parse_config(["--train_files", "t.csv", "--column_mapping", "id"])
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig(train_files=["t.csv"], column_mapping={"qid": "id"})


# --------------------------------------------------------------------------------------------------
# Hub datasets with a config, offline from the hub cache
# --------------------------------------------------------------------------------------------------

LOAD_OFFLINE = (
    "import json, sys; from kqa.data import load_hf_dataset; "
    "ex, report = load_hf_dataset(sys.argv[1], 'validation', config_name='mrc'); "
    "print(json.dumps({'ids': list(ex['id']), 'types': list(ex['question_type']), 'columns': report.columns, "
    "'source': report.source}, ensure_ascii=False))"
)

README = """---
configs:
- config_name: mrc
  data_files:
  - split: train
    path: mrc/train-*
  - split: validation
    path: mrc/validation-*
---
"""


@pytest.mark.parametrize("with_readme", [True, False], ids=["readme-configs", "config-folder"])
def test_a_hub_dataset_config_loads_offline_from_the_hub_cache(tmp_path, with_readme):
    repo = tmp_path / "repo"
    (repo / "mrc").mkdir(parents=True)
    write_parquet(repo / "mrc" / "validation-00000-of-00001.parquet", klue_rows())
    write_parquet(repo / "mrc" / "train-00000-of-00001.parquet", klue_rows()[:2])
    if with_readme:
        (repo / "README.md").write_text(README, encoding="utf-8")
    build_hub_cache(tmp_path / "hub", "kqa-test/klue-mrc-tiny", repo, repo_type="dataset")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "HF_HOME": str(tmp_path / "hf_home"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", LOAD_OFFLINE, "kqa-test/klue-mrc-tiny"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["ids"] == [*QUESTION_TYPES, "klue-mrc-7"]
    assert loaded["types"] == [1, 1, 2, 2, 1, 2, 3]
    assert loaded["source"] == "kqa-test/klue-mrc-tiny/mrc[validation]"
    assert loaded["columns"].startswith("klue-mrc: guid → id")
    absent = subprocess.run(
        [sys.executable, "-c", LOAD_OFFLINE, "kqa-test/not-cached"], env=env, capture_output=True, text=True
    )
    assert absent.returncode != 0 and "LocalEntryNotFoundError" in absent.stderr


def test_evaluate_scores_a_predictions_file_against_a_flat_data_file(tmp_path, capsys):
    """`kqa evaluate --predictions` takes the data files `--model` takes (the help says so), mapping included."""
    from kqa.cli import main as kqa_main

    data_file = write_jsonl(tmp_path / "klue.jsonl", klue_rows())
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"ko-1": "서울", "ko-3": "영국", "klue-mrc-7": ""}), encoding="utf-8")
    assert kqa_main(["evaluate", "--predictions", str(predictions), "--data_file", str(data_file)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["total"], result["answered"]) == (7, 3)
    assert result["breakdown"]["question_type"]["3"] == {"exact_match": 100.0, "f1": 100.0, "total": 1}
    renamed = write_jsonl(
        tmp_path / "renamed.jsonl",
        [{("passage" if k == "context" else k): v for k, v in r.items()} for r in klue_rows()],
    )
    flags = [
        "--predictions",
        str(predictions),
        "--data_file",
        str(renamed),
        "--column_mapping",
        "id=guid,context=passage",
    ]
    assert kqa_main(["evaluate", *flags]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 7
