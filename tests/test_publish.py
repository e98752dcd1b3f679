"""Publishing: the model card of best/ and final/ (parsed back with huggingface_hub), the folder handed to
huggingface_hub's upload (HfApi's create_repo / upload_folder replaced by recorders: the Hub cannot be
reached here), `kqa push`, and the Hub token kept out of every file and log."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, metadata_load

from kqa.cli import main as kqa_main
from kqa.model_card import (
    CARD_FILE,
    LIBRARY_NAME,
    PIPELINE_TAG,
    DevScore,
    ModelCardInfo,
    base_model_license,
    render_model_card,
)
from kqa.modeling import QuestionAnsweringModel
from kqa.publish import HubPushError, push_model_dir, upload_files
from kqa.testing import korean_squad_json, reset_accelerate_state, tiny_bert_config
from kqa.training.config import TrainConfig, parse_config
from kqa.training.publishing import push_saved_model, run_card_info

TOKEN = "hf_kqaTestTokenNeverWritten0123456789"
MODEL_FILES = ["config.json", "kqa_config.json", "model.safetensors"]


class HubRecorder:
    """Stands in for the Hub: records what HfApi.create_repo / create_branch / upload_folder were given
    (and the files under the folder at that moment)."""

    def __init__(self, monkeypatch, fail_with: Exception | None = None):
        self.calls: list[dict] = []
        recorder = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, **kwargs):
            if fail_with is not None:
                raise fail_with
            recorder.calls.append({"call": "create_repo", "repo_id": repo_id, "private": private, "token": api.token})
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, *, branch, exist_ok=False, **kwargs):
            recorder.calls.append({"call": "create_branch", "repo_id": repo_id, "branch": branch})

        def upload_folder(api, *, repo_id, folder_path, allow_patterns=None, revision=None, **kwargs):
            folder = Path(folder_path)
            recorder.calls.append(
                {
                    "call": "upload_folder",
                    "repo_id": repo_id,
                    "folder": folder,
                    "files": list(allow_patterns),
                    "revision": revision,
                    "commit_message": kwargs.get("commit_message"),
                    "contents": {name: (folder / name).read_bytes() for name in allow_patterns},
                }
            )
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    def uploads(self) -> list[dict]:
        return [call for call in self.calls if call["call"] == "upload_folder"]


def _card_info(**overrides) -> ModelCardInfo:
    values = dict(
        model_name="kqa-klue-bert",
        base_model="klue/bert-base",
        base_model_source="klue/bert-base",
        license="cc-by-sa-4.0",
        datasets=("KorQuAD/squad_kor_v1", "tydi_dev.json"),
        dev_scores=(
            DevScore("korquad", "KorQuAD/squad_kor_v1", 81.234, 89.876, "validation"),
            DevScore("tydi", "tydi_dev.json", 60.5, 70.25),
        ),
        step=1200,
        settings={"learning_rate": 3e-5, "max_seq_length": 384},
        load_from="user/kqa-klue-bert",
    )
    values.update(overrides)
    return ModelCardInfo(**values)


def _scores(card: ModelCard) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, float]] = {}
    for result in card.data.eval_results:
        assert result.task_type == PIPELINE_TAG
        scores.setdefault(result.dataset_name, {})[result.metric_type] = result.metric_value
    return scores


# ---- the card ---------------------------------------------------------------------------------------------


def test_the_card_parses_back_with_its_metadata_and_scores(tmp_path):
    path = tmp_path / CARD_FILE
    path.write_text(render_model_card(_card_info()), encoding="utf-8")
    card = ModelCard.load(path)
    assert card.data.pipeline_tag == PIPELINE_TAG == "question-answering"
    assert card.data.library_name == LIBRARY_NAME == "kqa"
    assert card.data.base_model == "klue/bert-base"
    assert card.data.language == ["ko"]
    assert card.data.license == "cc-by-sa-4.0"
    assert card.data.datasets == ["KorQuAD/squad_kor_v1", "tydi_dev.json"]
    assert _scores(card) == {"korquad": {"exact_match": 81.23, "f1": 89.88}, "tydi": {"exact_match": 60.5, "f1": 70.25}}
    splits = {r.dataset_name: (r.dataset_type, r.dataset_split) for r in card.data.eval_results}
    assert splits == {"korquad": ("KorQuAD/squad_kor_v1", "validation"), "tydi": ("tydi_dev.json", None)}
    metadata = metadata_load(path)
    assert metadata["model-index"][0]["name"] == "kqa-klue-bert"
    assert "| korquad | `KorQuAD/squad_kor_v1` | 81.23 | 89.88 |" in card.text
    assert "| `learning_rate` | `3e-05` |" in card.text
    assert 'QuestionAnswerer.from_pretrained("user/kqa-klue-bert")' in card.text
    assert "kqa predict --model user/kqa-klue-bert" in card.text


def test_unknown_license_base_model_and_scores_are_left_out(tmp_path):
    path = tmp_path / CARD_FILE
    info = _card_info(license=None, base_model=None, base_model_source="models/tiny-bert", dev_scores=(), step=None)
    path.write_text(render_model_card(info), encoding="utf-8")
    metadata = metadata_load(path)
    assert "license" not in metadata and "base_model" not in metadata and "model-index" not in metadata
    card = ModelCard.load(path)
    assert card.data.eval_results is None
    assert "fine-tuned from `models/tiny-bert`" in card.text
    assert "saved without an evaluation" in card.text


def test_the_base_models_license_comes_from_its_card_on_disk(tmp_path):
    (tmp_path / CARD_FILE).write_text("---\nlicense: apache-2.0\n---\n# encoder\n", encoding="utf-8")
    assert base_model_license(str(tmp_path)) == "apache-2.0"
    assert base_model_license(str(tmp_path / "missing")) is None
    assert base_model_license("nobody-has/this-model") is None  # not in the hub cache: nothing is downloaded


def test_the_card_of_a_run_names_its_data_settings_and_hub_base_model(tmp_path):
    config = TrainConfig.from_flat(
        model_name_or_path="klue/bert-base",
        dataset_name="KorQuAD/squad_kor_v1",
        validation_files=[f"tydi={tmp_path / 'tydi_dev.json'}"],
        hub_model_id="user/kqa-klue",
        push_to_hub=True,
        hub_token=TOKEN,
        model_license="cc-by-sa-4.0",
        learning_rate=5e-5,
    )
    metrics = {"step": 30, "tydi/exact_match": 50.0, "tydi/f1": 61.0, "exact_match": 50.0, "f1": 61.0}
    info = run_card_info(config, tmp_path / "best", metrics, num_processes=2)
    assert info.base_model == "klue/bert-base"
    assert info.datasets == ("KorQuAD/squad_kor_v1", "tydi_dev.json")
    assert info.dev_scores == (DevScore("tydi", "tydi_dev.json", 50.0, 61.0),)
    assert info.settings["learning_rate"] == 5e-5 and info.settings["num_processes"] == 2
    assert info.load_from == "user/kqa-klue" and info.model_name == "kqa-klue" and info.license == "cc-by-sa-4.0"
    assert TOKEN not in render_model_card(info)


# ---- the token ----------------------------------------------------------------------------------------------


def test_the_hub_flags_parse_and_the_token_is_never_saved(tmp_path, korean_squad_file):
    argv = ["--train_files", str(korean_squad_file), "--push_to_hub", "--hub_model_id", "user/m"]
    config = parse_config([*argv, "--hub_token", TOKEN, "--hub_private", "--hub_strategy", "best"])
    assert (config.push_to_hub, config.hub_model_id, config.hub_private, config.hub_strategy) == (
        True,
        "user/m",
        True,
        "best",
    )
    assert config.hub_token == TOKEN
    config.save(tmp_path / "train_config.yaml")
    assert TOKEN not in (tmp_path / "train_config.yaml").read_text(encoding="utf-8")
    assert TOKEN not in repr(config) and TOKEN not in json.dumps(config.to_flat_dict())
    assert parse_config(["--config", str(tmp_path / "train_config.yaml")]).hub_token is None


def test_push_to_hub_needs_a_repository_and_a_known_strategy(korean_squad_file):
    with pytest.raises(ValueError, match="push_to_hub needs hub_model_id"):
        TrainConfig.from_flat(train_files=[str(korean_squad_file)], push_to_hub=True)
    with pytest.raises(ValueError, match="hub_strategy='every_save': expected one of end, best"):
        TrainConfig.from_flat(train_files=[str(korean_squad_file)], hub_strategy="every_save")


# ---- the folder handed to the upload -------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A saved kqa model with what a run leaves beside it: metrics, predictions, a hidden cache."""
    torch.manual_seed(0)
    model = QuestionAnsweringModel.from_config(tiny_bert_config(len(tiny_tokenizer)))
    out = model.save_pretrained(tmp_path / "best", tokenizer=tiny_tokenizer, kqa_config={})
    (out / "metrics.json").write_text(json.dumps({"step": 4, "ko/exact_match": 25.0, "ko/f1": 40.0}))
    (out / "predictions" / "ko").mkdir(parents=True)
    (out / "predictions" / "ko" / "predictions.json").write_text("{}")
    (out / ".cache").mkdir()
    (out / ".cache" / "lock").write_text("")
    return out


def _tokenizer_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "vocab")))


def test_push_uploads_exactly_the_model_files_with_a_card(model_dir, monkeypatch):
    hub = HubRecorder(monkeypatch)
    url = push_model_dir(model_dir, "user/kqa-tiny", private=True, token=TOKEN, commit_message="first")
    assert url == "https://huggingface.co/user/kqa-tiny/commit/abc"
    create, upload = hub.calls
    assert create == {"call": "create_repo", "repo_id": "user/kqa-tiny", "private": True, "token": TOKEN}
    assert upload["folder"] == model_dir and upload["repo_id"] == "user/kqa-tiny"
    assert upload["revision"] is None and upload["commit_message"] == "first"
    expected = sorted([*MODEL_FILES, CARD_FILE, "metrics.json", *_tokenizer_files(model_dir)])
    assert upload["files"] == expected
    assert "tokenizer_config.json" in expected  # the tokenizer travels
    assert all(TOKEN.encode() not in content for content in upload["contents"].values())
    card = ModelCard.load(model_dir / CARD_FILE)  # written because the directory had none
    assert card.data.library_name == "kqa" and _scores(card) == {"ko": {"exact_match": 25.0, "f1": 40.0}}
    assert "AutoModelForQuestionAnswering" in card.text and "BertForQuestionAnswering" in card.text


def test_a_card_written_at_push_lists_each_dev_set_once_without_its_breakdown(model_dir, monkeypatch):
    """metrics.json of a KLUE-MRC run holds `<set>/question_type=<v>/...` too: those are no dev sets."""
    metrics = {"step": 4, "exact_match": 30.0, "f1": 45.0, "klue/exact_match": 30.0, "klue/f1": 45.0}
    metrics |= {"klue/unanswered": 0, "klue/question_type=1/exact_match": 50.0, "klue/question_type=1/f1": 60.0}
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    HubRecorder(monkeypatch)
    push_model_dir(model_dir, "user/kqa-tiny")
    card = ModelCard.load(model_dir / CARD_FILE)
    assert _scores(card) == {"klue": {"exact_match": 30.0, "f1": 45.0}}
    assert "question_type" not in card.text


def test_push_to_a_branch_creates_it(model_dir, monkeypatch):
    hub = HubRecorder(monkeypatch)
    push_model_dir(model_dir, "user/kqa-tiny", revision="v1")
    assert [c["call"] for c in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[1]["branch"] == "v1" and hub.calls[2]["revision"] == "v1"
    assert hub.calls[0]["private"] is False


def test_a_model_outside_the_transformers_layout_says_so(model_dir, monkeypatch):
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = None  # what export_config writes for a model with another head
    (model_dir / "config.json").write_text(json.dumps(config))
    HubRecorder(monkeypatch)
    push_model_dir(model_dir, "user/kqa-tiny")
    text = (model_dir / CARD_FILE).read_text(encoding="utf-8")
    assert "AutoModelForQuestionAnswering" not in text and "load them with kqa" in text


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "pytorch_model.bin").write_bytes(b"x"),
            r"refusing to upload pickle files \(pytorch_model.bin\)",
        ),
        (lambda d: (d / "config.json").unlink(), "not a saved model directory \\(no config.json\\)"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda d: [(d / n).unlink() for n in _tokenizer_files(d)], "no tokenizer files"),
    ],
)
def test_a_directory_that_is_not_a_clean_model_is_refused(model_dir, monkeypatch, damage, message):
    damage(model_dir)
    hub = HubRecorder(monkeypatch)
    with pytest.raises(ValueError, match=message) as info:
        push_model_dir(model_dir, "user/kqa-tiny")
    assert str(model_dir) in str(info.value)
    assert hub.calls == [] and not (model_dir / CARD_FILE).exists()


def test_a_hub_failure_is_one_line_naming_the_directory_and_repository(model_dir, monkeypatch):
    # No patch: huggingface_hub's own client, offline (conftest sets HF_HUB_OFFLINE=1).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError) as info:
        push_model_dir(model_dir, "user/kqa-tiny", token=TOKEN)
    message = str(info.value)
    assert message.startswith(f"could not push {model_dir} to the Hub repository user/kqa-tiny: OfflineModeIsEnabled")
    assert "\n" not in message and TOKEN not in message


def test_the_token_is_masked_in_a_failure_that_echoes_it(model_dir, monkeypatch):
    HubRecorder(monkeypatch, fail_with=ValueError(f"Invalid user token {TOKEN}.\nMore detail"))
    with pytest.raises(HubPushError, match=r"ValueError: Invalid user token \*\*\*\.$"):
        push_model_dir(model_dir, "user/kqa-tiny", token=TOKEN)


def test_kqa_push_in_process(model_dir, monkeypatch, capsys):
    hub = HubRecorder(monkeypatch)
    argv = ["push", "--model", str(model_dir), "--repo", "user/kqa-tiny", "--private", "--token", TOKEN]
    assert kqa_main([*argv, "--commit_message", "from the CLI"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert hub.uploads()[0]["commit_message"] == "from the CLI" and hub.calls[0]["private"] is True
    assert hub.uploads()[0]["files"] == upload_files(model_dir)


def test_kqa_push_errors_are_one_line(model_dir, monkeypatch, capsys):
    HubRecorder(monkeypatch, fail_with=OSError("Token is required (`token=True`), but no token found."))
    assert kqa_main(["push", "--model", str(model_dir), "--repo", "user/kqa-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kqa push: error: could not push {model_dir} to the Hub repository user/kqa-tiny: "
        "OSError: Token is required (`token=True`), but no token found."
    )
    assert kqa_main(["push", "--model", str(model_dir.parent), "--repo", "user/kqa-tiny"]) == 2
    assert "not a saved model directory" in capsys.readouterr().err


# ---- a training run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, tiny_tokenizer):
    """A tiny run that pushes on each new best and at its end, with a token given as a setting."""
    from transformers import BertModel

    from kqa.training.recipe import QATrainingRecipe

    root = tmp_path_factory.mktemp("pushed_run")
    data = root / "korean.json"
    data.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tiny_tokenizer)), add_pooling_layer=False).save_pretrained(root / "backbone")
    tiny_tokenizer.save_pretrained(root / "backbone")
    config = TrainConfig.from_flat(
        model_name_or_path=str(root / "backbone"),
        train_files=[str(data)],
        validation_files=[f"ko={data}"],
        dataset_name=None,
        max_seq_length=64,
        doc_stride=16,
        max_query_length=16,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        max_train_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        mixed_precision="no",
        logging_steps=1,
        output_dir=str(root / "run"),
        disable_tqdm=True,
        push_to_hub=True,
        hub_model_id="user/kqa-tiny-run",
        hub_token=TOKEN,
        hub_strategy="best",
    )
    monkeypatch = pytest.MonkeyPatch()
    hub = HubRecorder(monkeypatch)
    handler = _Capture()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        recipe = QATrainingRecipe(config).setup()
        recipe.train()
    finally:
        logging.getLogger().removeHandler(handler)
        monkeypatch.undo()
        reset_accelerate_state()
    return root / "run", hub, handler.text, recipe.state


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.text = ""

    def emit(self, record):
        self.text += self.format(record) + "\n"


@pytest.mark.parametrize("saved", ["best", "final"])
def test_a_run_writes_a_valid_card_into_best_and_final(pushed_run, saved):
    run, _, _, state = pushed_run
    directory = run / saved
    card = ModelCard.load(directory / CARD_FILE)
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["step"] == (state.best_step if saved == "best" else 4)
    assert _scores(card) == {
        "ko": {"exact_match": round(metrics["ko/exact_match"], 2), "f1": round(metrics["ko/f1"], 2)}
    }
    assert card.data.pipeline_tag == "question-answering" and card.data.library_name == "kqa"
    assert card.data.base_model is None  # a local encoder: named in the text, not as a hub id
    assert f"fine-tuned from `{run.parent / 'backbone'}`" in card.text
    assert card.data.datasets == ["korean.json"]
    assert f"saved at optimizer step {metrics['step']}" in card.text
    assert "| `max_train_steps` | `4` |" in card.text
    assert 'QuestionAnswerer.from_pretrained("user/kqa-tiny-run")' in card.text


def test_a_run_pushes_its_best_models_and_at_the_end(pushed_run):
    run, hub, _, state = pushed_run
    uploads = hub.uploads()
    assert {c["repo_id"] for c in hub.calls} == {"user/kqa-tiny-run"}
    assert all(c["token"] == TOKEN and c["private"] is False for c in hub.calls if c["call"] == "create_repo")
    assert [u["folder"] for u in uploads][-1] == run / "best"  # the end pushes best/
    assert uploads[-1]["commit_message"].startswith("End of training")
    assert all(u["folder"] == run / "best" for u in uploads)
    assert 2 <= len(uploads) <= 3  # one per new best (steps 2 and 4 may both improve), one at the end
    best = run / "best"
    expected = sorted([*MODEL_FILES, CARD_FILE, "metrics.json", *_tokenizer_files(best)])
    assert uploads[-1]["files"] == expected  # no predictions, optimizer state or checkpoints
    assert json.loads(uploads[-1]["contents"]["metrics.json"])["step"] == state.best_step


def test_the_token_appears_in_no_file_of_the_run_and_no_log(pushed_run):
    run, hub, logs, _ = pushed_run
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "train_config.yaml" for p in files) and any(p.name == CARD_FILE for p in files)
    assert [p for p in files if TOKEN.encode() in p.read_bytes()] == []
    assert "pushed" in logs and TOKEN not in logs
    assert all(TOKEN.encode() not in content for u in hub.uploads() for content in u["contents"].values())


class _Accelerator:
    def __init__(self, is_main_process: bool = True):
        self.is_main_process = is_main_process


def _push_config(korean_squad_file: Path, **overrides) -> TrainConfig:
    values = dict(train_files=[str(korean_squad_file)], push_to_hub=True, hub_model_id="user/m", hub_token=TOKEN)
    return TrainConfig.from_flat(**{**values, **overrides})


def test_which_directory_a_run_pushes_and_when(model_dir, korean_squad_file, monkeypatch):
    hub = HubRecorder(monkeypatch)
    final = model_dir.parent / "final"
    shutil.copytree(model_dir, final)
    end_only, on_best = _push_config(korean_squad_file), _push_config(korean_squad_file, hub_strategy="best")
    assert push_saved_model(_Accelerator(), end_only, model_dir, model_dir) is None  # a new best, strategy end
    assert push_saved_model(_Accelerator(False), on_best, model_dir, model_dir) is None  # not the main process
    assert push_saved_model(_Accelerator(), _push_config(korean_squad_file, push_to_hub=False), final, None) is None
    assert hub.uploads() == []
    push_saved_model(_Accelerator(), on_best, model_dir, model_dir)  # a new best, strategy best
    push_saved_model(_Accelerator(), end_only, final, model_dir)  # the end of a run with a best model
    push_saved_model(_Accelerator(), end_only, final, None)  # the end of a run that never evaluated
    assert [u["folder"] for u in hub.uploads()] == [model_dir, model_dir, final]


def test_a_failed_push_warns_after_a_best_and_raises_at_the_end(model_dir, korean_squad_file, monkeypatch, caplog):
    HubRecorder(monkeypatch, fail_with=OSError("Network is unreachable"))
    config = _push_config(korean_squad_file, hub_strategy="best")
    with caplog.at_level(logging.WARNING, logger="kqa.training.publishing"):
        assert push_saved_model(_Accelerator(), config, model_dir, model_dir) is None
    assert "could not push" in caplog.text and "training goes on" in caplog.text and TOKEN not in caplog.text
    with pytest.raises(HubPushError, match="user/m: OSError: Network is unreachable"):
        push_saved_model(_Accelerator(), config, model_dir.parent / "final", model_dir)


def test_a_base_card_that_does_not_parse_gives_no_license(tmp_path, caplog):
    (tmp_path / CARD_FILE).write_text("---\nlicense: [unclosed\n---\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="kqa.model_card"):
        assert base_model_license(str(tmp_path)) is None
    assert "could not read its license" in caplog.text


@pytest.mark.parametrize("vocabulary", ["spiece.model", "vocab.json"])
def test_a_tokenizer_of_one_vocabulary_file_is_a_tokenizer(model_dir, vocabulary):
    """T5/ALBERT-style (spiece.model) and GPT-2/RoBERTa-style (vocab.json) tokenizers saved without tokenizer.json."""
    for name in _tokenizer_files(model_dir):
        (model_dir / name).unlink()
    (model_dir / vocabulary).write_bytes(b"x")
    assert vocabulary in upload_files(model_dir)
