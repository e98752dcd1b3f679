"""One command-line dialect (kqa.flags) for every `kqa` command, `train.py`, `evaluate.py` and
`python -m kqa.offline`: snake_case flags, `--flag [true|false]` booleans, defaults from the dataclasses
that own them, and earlier spellings that still work with a one-line note."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from kqa.cli import build_parser
from kqa.cli.parser import OWN_PARSER_COMMANDS
from kqa.offline.__main__ import _parser as offline_parser
from kqa.training.config import build_arg_parser

ROOT = Path(__file__).resolve().parents[1]
SNAKE_FLAG = re.compile(r"--[a-z][a-z0-9_]*")


def _evaluate_parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("kqa_evaluate_script", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {f"kqa {name}": p for name, p in _subparsers(build_parser()).items() if name not in OWN_PARSER_COMMANDS}
    parsers.update({f"kqa.offline {name}": p for name, p in _subparsers(offline_parser()).items()})
    parsers["train.py"] = build_arg_parser()
    parsers["evaluate.py"] = _evaluate_parser()
    return parsers


def test_every_documented_flag_is_snake_case():
    offending = []
    for name, parser in _all_parsers().items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue  # an earlier spelling, kept working
            offending += [
                f"{name} {o}"
                for o in action.option_strings
                if o.startswith("--") and o != "--help" and not SNAKE_FLAG.fullmatch(o)
            ]
    assert not offending


def test_every_boolean_is_flag_or_flag_true_false():
    for name, parser in _all_parsers().items():
        for action in parser._actions:
            assert not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)), (
                f"{name} {action.option_strings}: a store_true flag; use kqa.flags.add_bool_flag"
            )
    index = _subparsers(build_parser())["index"]
    common = ["--corpus", "docs", "--output_dir", "out"]
    assert index.parse_args(common).strict is False
    assert index.parse_args([*common, "--strict"]).strict is True
    assert index.parse_args([*common, "--strict", "false"]).strict is False
    assert index.parse_args([*common, "--disable_tqdm", "yes"]).disable_tqdm is True


@pytest.mark.parametrize(
    ("parser_name", "argv", "expected", "note"),
    [
        (
            "kqa predict",
            ["--model", "m", "--batch_size", "4", "--output", "a.json"],
            {"model_batch_size": 4, "output_file": "a.json"},
            "--batch_size is deprecated; use --model_batch_size",
        ),
        (
            "kqa serve",
            ["--model", "m", "--batch_size", "2"],
            {"micro_batch_size": 2},
            "--batch_size is deprecated; use --micro_batch_size",
        ),
        (
            "kqa export",
            ["--model", "m", "--out", "e", "--no_optimize"],
            {"output_dir": "e", "optimize": False},
            "--no_optimize is deprecated; use --optimize false",
        ),
        (
            "kqa index",
            ["--corpus", "d", "--out", "i", "--quiet", "--batch_size", "8"],
            {"output_dir": "i", "disable_tqdm": True, "embedding_batch_size": 8},
            "--quiet is deprecated; use --disable_tqdm",
        ),
        (
            "kqa make-tiny-model",
            ["--out", "t", "--text_from", "a.json"],
            {"output_dir": "t"},
            "--out is deprecated; use --output_dir",
        ),
        (
            "kqa.offline build-backbone",
            ["--out", "b", "--trim-vocab-korean", "--no-verify"],
            {"output_dir": Path("b"), "trim_vocab_korean": True, "verify": False},
            "--trim-vocab-korean is deprecated; use --trim_vocab_korean",
        ),
        (
            "evaluate.py",
            ["--model", "m", "--data_file", "d.json", "--batch_size", "4"],
            {"per_device_eval_batch_size": 4},
            "--batch_size is deprecated; use --per_device_eval_batch_size",
        ),
    ],
)
def test_earlier_spellings_still_work_with_a_note(parser_name, argv, expected, note, capsys):
    args = _all_parsers()[parser_name].parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    assert f"note: {note}" in capsys.readouterr().err


def test_a_required_flag_is_met_by_either_spelling_and_named_when_missing(capsys):
    export = _subparsers(build_parser())["export"]
    assert export.parse_args(["--model", "m", "--output_dir", "e"]).output_dir == "e"
    with pytest.raises(SystemExit):
        export.parse_args(["--model", "m"])
    assert "--output_dir is required" in capsys.readouterr().err


def test_flag_defaults_come_from_the_dataclasses_that_own_them():
    from kqa.inference.export import ONNX_OPSET, Int8Settings
    from kqa.inference.runtimes import BACKENDS
    from kqa.prediction import EVAL_BATCH_SIZE, OVERRIDABLE_SETTINGS, PREDICT_BATCH_SIZE
    from kqa.serving.settings import BatchingSettings, ServerLimits

    parsers = _all_parsers()
    serve = parsers["kqa serve"].parse_args(["--model", "m"])
    for field in dataclasses.fields(ServerLimits):
        assert getattr(serve, field.name) == field.default, field.name
    batching = BatchingSettings()
    assert (serve.micro_batch_size, serve.max_wait_ms, serve.max_queue) == (
        batching.batch_size,
        batching.max_wait_ms,
        batching.max_queue,
    )
    assert serve.model_batch_size == PREDICT_BATCH_SIZE
    assert parsers["kqa predict"].parse_args(["--model", "m"]).model_batch_size == PREDICT_BATCH_SIZE
    evaluate = parsers["evaluate.py"].parse_args(["--model", "m", "--data_file", "d"])
    assert evaluate.per_device_eval_batch_size == EVAL_BATCH_SIZE
    export = parsers["kqa export"].parse_args(["--model", "m", "--output_dir", "e"])
    assert export.opset == ONNX_OPSET and export.int8_keep_fp32 == list(Int8Settings.keep_fp32)
    for name in ("kqa predict", "evaluate.py"):
        flags = {a.dest for a in parsers[name]._actions}
        assert set(OVERRIDABLE_SETTINGS) <= flags, name
    backend = next(a for a in parsers["kqa ask"]._actions if a.dest == "backend")
    assert tuple(backend.choices) == BACKENDS
