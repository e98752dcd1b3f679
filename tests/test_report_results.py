"""scripts/report_results.py: the answer-type and context-length groups, and the figures of a real tiny run."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kqa.testing import KOREAN_EXAMPLES, korean_squad_json, tiny_bert_config

ROOT = Path(__file__).resolve().parent.parent
# matplotlib's default colour cycle, C0..C3.
DEFAULT_CYCLE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
FIGURE_FILES = ["learning_curves.png", "f1_by_context_length.png", "f1_by_answer_type.png", "gold_answer_positions.png"]


def _load_report_module():
    spec = importlib.util.spec_from_file_location("report_results", ROOT / "scripts" / "report_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report_module()


def _example(qid: str, context: str, answer: str, start: int | None = None) -> dict:
    start = context.index(answer) if start is None else start
    return {
        "id": qid,
        "title": qid,
        "context": context,
        "question": "무엇인가?",
        "answers": {"text": [answer], "answer_start": [start]},
        "is_impossible": False,
    }


# ---- groups on hand-made data ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "chars, bucket",
    [
        (0, "0-199"),
        (199, "0-199"),
        (200, "200-399"),
        (599, "400-599"),
        (600, "600-999"),
        (1999, "1000-1999"),
        (2000, "2000+"),
        (9000, "2000+"),
    ],
)
def test_context_length_buckets(chars, bucket):
    assert report.context_bucket_labels() == ["0-199", "200-399", "400-599", "600-999", "1000-1999", "2000+"]
    assert report.context_bucket(chars) == bucket


@pytest.mark.parametrize(
    "golds, types",
    [
        (["서울"], ["other short"]),
        (["1446년"], ["number/date"]),
        (["서울", "2015"], ["number/date"]),  # any gold answer with a digit
        (["가" * 14], ["other short"]),
        (["가" * 15], ["long"]),
        (["서울", "가" * 15], ["long"]),  # the longest gold answer decides
        (["1948년 8월 15일 대한민국 정부 수립"], ["number/date", "long"]),
    ],
)
def test_answer_types(golds, types):
    assert report.answer_types(golds) == types


def test_question_scores_and_group_means_on_known_data():
    examples = [
        _example("a", "가" * 50 + "서울", "서울"),  # 52 chars, other short, exact: 100
        _example("b", "나" * 250 + "1446년", "1446년"),  # 255 chars, number/date, half right
        _example(
            "c", "다" * 300 + "훈민정음은 오늘날 한글이라 불린다", "훈민정음은 오늘날 한글이라 불린다"
        ),  # long, no answer
        _example("d", "라" * 2500 + "부산", "부산"),  # 2502 chars, other short, wrong
    ]
    predictions = {"a": "서울", "b": "1446", "d": "서울"}
    rows = report.question_scores(examples, predictions)
    f1 = {row["id"]: row["f1"] for row in rows}
    assert f1["a"] == 100.0 and f1["c"] == 0.0 and f1["d"] == 0.0
    assert f1["b"] == pytest.approx(100 * 2 * 0.8 * 1.0 / 1.8)  # 4 of 5 gold characters, all predicted ones right

    by_type = report.mean_by_group(rows, lambda row: row["answer_types"], report.ANSWER_TYPES)
    assert by_type == {
        "number/date": {"mean": pytest.approx(f1["b"]), "count": 1},
        "long": {"mean": 0.0, "count": 1},
        "other short": {"mean": 50.0, "count": 2},
    }
    buckets = report.context_bucket_labels()
    by_length = report.mean_by_group(rows, lambda row: [report.context_bucket(row["context_chars"])], buckets)
    assert list(by_length) == ["0-199", "200-399", "2000+"]  # empty buckets are left out, order kept
    assert by_length["0-199"] == {"mean": 100.0, "count": 1}
    assert by_length["200-399"] == {"mean": pytest.approx(f1["b"] / 2), "count": 2}
    assert by_length["2000+"] == {"mean": 0.0, "count": 1}

    # The error analysis counts the same questions as the figure's answer types.
    analysis = report.error_analysis(examples, predictions)
    assert analysis["numbers_or_dates"] == by_type["number/date"]["count"]
    assert analysis["long_answers"] == by_type["long"]["count"]
    assert (analysis["wrong"], analysis["unanswered"], analysis["partial_overlap"]) == (3, 1, 1)


def _png(path: Path):
    from PIL import Image

    image = Image.open(path)
    image.load()
    return image


def test_answer_positions_figure_names_lost_answers(tmp_path):
    drawn = report.plot_answer_positions(
        {"dev": [10, 12, 40], "other": [5]}, {"dev": 2, "other": 0}, 64, tmp_path / "positions.png"
    )
    assert drawn == {"dev": [10, 12, 40], "other": [5]}
    image = _png(tmp_path / "positions.png")
    assert json.loads(image.text["series"]) == {"dev": 3, "other": 1}
    assert "answers in no window: 2 (dev)" in image.text["Title"] and "other" not in image.text["Title"]
    report.plot_answer_positions({"dev": [10]}, {"dev": 0}, 64, tmp_path / "none_lost.png")
    assert "every answer is in some window" in _png(tmp_path / "none_lost.png").text["Title"]


# ---- the figures of a real run ---------------------------------------------------------------------------


def _long_context_set() -> dict:
    """KOREAN_EXAMPLES behind ~200 characters of other text (answers late in their contexts, several
    windows), and one answer too long for any 64-token window."""
    filler = " ".join(ex["context"] for ex in KOREAN_EXAMPLES[::2]) * 2
    rows = []
    for ex in copy.deepcopy(KOREAN_EXAMPLES[:3]):
        ex["id"] = "long-" + ex["id"]
        ex["context"] = filler + " " + ex["context"]
        ex["answers"]["answer_start"] = [s + len(filler) + 1 for s in ex["answers"]["answer_start"]]
        rows.append(ex)
    whole = KOREAN_EXAMPLES[4]["context"]
    rows.append(_example("long-lost", filler + " " + whole, whole, len(filler) + 1))
    rows[-1]["title"] = "세종"
    return korean_squad_json(rows)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny training run: baseline evaluation at step 0, 4 steps, evaluations at steps 2 and 4."""
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from transformers import BertModel

    from kqa.training.config import TrainConfig
    from kqa.training.recipe import QATrainingRecipe

    root = tmp_path_factory.mktemp("report_run")
    short_file, long_file = root / "korean.json", root / "korean_long.json"
    short_file.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    long_file.write_text(json.dumps(_long_context_set(), ensure_ascii=False), encoding="utf-8")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tiny_tokenizer)), add_pooling_layer=False).save_pretrained(root / "backbone")
    tiny_tokenizer.save_pretrained(root / "backbone")
    config = TrainConfig.from_flat(
        model_name_or_path=str(root / "backbone"),
        train_files=[str(short_file)],
        dataset_name=None,
        validation_files=[f"ko={short_file}", f"long={long_file}"],
        max_seq_length=64,
        doc_stride=16,
        max_query_length=16,
        max_answer_length=10,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        max_train_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        eval_before_training=True,
        save_strategy="no",
        logging_steps=1,
        mixed_precision="no",
        output_dir=str(root / "run"),
        disable_tqdm=True,
        report_to="none",
        seed=13,
    )
    try:
        QATrainingRecipe(config).setup().train()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()
    assert report.main([str(root / "run"), "--wall_seconds", "12"]) == 0
    return root / "run"


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]


# Pixels of a series' colour beyond what its legend entry alone draws (a legend line or patch is 50-200
# pixels at dpi 100; an empty step histogram still draws its baseline, under 1000).
DRAWN_LINE, DRAWN_SERIES = 300, 1500


def _colour_pixels(image, hex_colour: str, tolerance: int = 8) -> int:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return int(np.sum(np.abs(pixels - rgb).max(axis=-1) <= tolerance))


def test_every_figure_is_a_png_linked_from_results_md(finished_run):
    text = (finished_run / "results.md").read_text(encoding="utf-8")
    listed = json.loads((finished_run / "results.json").read_text(encoding="utf-8"))["figures"]
    assert [figure["file"] for figure in listed] == FIGURE_FILES
    for name in FIGURE_FILES:
        image = _png(finished_run / name)
        assert image.format == "PNG"
        assert 800 <= image.width <= 2000 and 300 <= image.height <= 1000, image.size
        assert re.search(rf"!\[[^\]]+\]\({re.escape(name)}\)", text), name
        assert json.loads(image.text["series"]) == next(f["series"] for f in listed if f["file"] == name)


def test_learning_curves_plot_every_logged_record(finished_run):
    records = _records(finished_run)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/f1" in r]
    assert (len(train), [r["step"] for r in evals]) == (4, [0, 2, 4])  # the run this test expects
    image = _png(finished_run / "learning_curves.png")
    expected = {"train loss": len(train)}
    for name in ("ko", "long"):
        expected |= {f"{name} dev loss": len(evals), f"{name} EM": len(evals), f"{name} F1": len(evals)}
    assert json.loads(image.text["series"]) == expected
    assert _colour_pixels(image, DEFAULT_CYCLE[0]) > DRAWN_LINE  # train loss
    for colour in DEFAULT_CYCLE[1:3]:  # one colour per validation set, in all three panels
        assert _colour_pixels(image, colour) > DRAWN_SERIES, colour
    assert _colour_pixels(image, DEFAULT_CYCLE[3]) == 0  # nothing else was drawn in the cycle's colours


@pytest.mark.parametrize("name", ["f1_by_context_length.png", "f1_by_answer_type.png"])
def test_f1_group_figures_have_one_series_per_validation_set(finished_run, name):
    image = _png(finished_run / name)
    series = json.loads(image.text["series"])
    assert list(series) == ["ko", "long"]
    # ko: 6 short contexts, answers 17세기 and 1446년 hold digits; long: 3 + 1 contexts of 200-399
    # characters, the lost answer (a whole sentence with 1443년) is long and a date.
    expected_points = {"f1_by_context_length.png": {"ko": 1, "long": 1}, "f1_by_answer_type.png": {"ko": 2, "long": 3}}[
        name
    ]
    assert series == expected_points
    for colour in DEFAULT_CYCLE[1:3]:
        assert _colour_pixels(image, colour) > DRAWN_SERIES, colour
    assert _colour_pixels(image, DEFAULT_CYCLE[0]) == 0 and _colour_pixels(image, DEFAULT_CYCLE[3]) == 0


def test_gold_answer_positions_use_the_runs_windows(finished_run):
    image = _png(finished_run / "gold_answer_positions.png")
    series = json.loads(image.text["series"])
    assert list(series) == ["ko", "long"]
    # The windows that hold an answer, counted from the training labels (CLS, position 0, elsewhere).
    from transformers import AutoTokenizer

    from kqa.data import load_squad_json
    from kqa.features import prepare_train_features
    from kqa.training.config import TrainConfig, load_yaml

    config = TrainConfig.from_flat(**load_yaml(finished_run / "train_config.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(str(finished_run / "best"))
    for name, path in config.named_validation_files().items():
        features, _ = prepare_train_features(load_squad_json(path)[0], tokenizer, config.features, cache=False)
        assert series[name] == sum(1 for start in features["start_positions"] if start > 0), name
    assert series["ko"] >= 6 and series["long"] >= 3  # every held answer in at least one window
    assert "answers in no window: 1 (long)" in image.text["Title"]
    for colour in DEFAULT_CYCLE[1:3]:
        assert _colour_pixels(image, colour) > DRAWN_SERIES, colour
