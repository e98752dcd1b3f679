"""The training loop on a tiny random BERT: learning, selection by F1, resume, checkpoints, tracking."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kqa.testing import korean_squad_json, reset_accelerate_state, tiny_bert_config
from kqa.training.checkpoints import STATE_MARKER, find_latest_checkpoint
from kqa.training.config import TrainConfig
from kqa.training.recipe import NonFiniteLossError, QATrainingRecipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each recipe in these tests starts from a clean slate."""
    yield
    reset_accelerate_state()


def _make_backbone_dir(path: Path, tokenizer, **overrides) -> Path:
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer), **overrides), add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def backbone_dir(tmp_path, tiny_tokenizer):
    return _make_backbone_dir(tmp_path / "backbone", tiny_tokenizer)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_tokenizer) -> Path:
    """One short training run shared by the tests that only read its outputs (trained once per module)."""
    root = tmp_path_factory.mktemp("trained_run")
    data_file = root / "korean.json"
    data_file.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    backbone = _make_backbone_dir(root / "backbone", tiny_tokenizer)
    cfg = _config(backbone, data_file, root / "run", max_train_steps=60, eval_strategy="steps", eval_steps=60)
    QATrainingRecipe(cfg).setup().train()
    reset_accelerate_state()
    return root / "run"


@pytest.fixture
def trained_model_dir(trained_run) -> Path:
    return trained_run / "best"


@pytest.fixture
def dropout_backbone_dir(tmp_path, tiny_tokenizer):
    # Dropout makes the loss depend on the RNG state, so resume tests also check RNG restoration.
    return _make_backbone_dir(
        tmp_path / "backbone_dropout", tiny_tokenizer, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )


def _config(model_dir: Path, data_file: Path, output_dir: Path, **overrides) -> TrainConfig:
    values = dict(
        model_name_or_path=str(model_dir),
        train_files=[str(data_file)],
        validation_files=[f"ko={data_file}"],
        dataset_name=None,
        max_seq_length=64,
        doc_stride=16,
        max_query_length=16,
        max_answer_length=10,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        num_train_epochs=1,
        mixed_precision="no",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        output_dir=str(output_dir),
        disable_tqdm=True,
        seed=13,
    )
    values.update(overrides)
    return TrainConfig.from_flat(**values)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _weights(recipe: QATrainingRecipe) -> dict[str, torch.Tensor]:
    model = recipe.accelerator.unwrap_model(recipe.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_lowers_loss_and_raises_f1(backbone_dir, korean_squad_file, tmp_path):
    # The tiny set is both trained on and evaluated: the test is that the loop learns at all.
    cfg = _config(
        backbone_dir, korean_squad_file, tmp_path / "run", max_train_steps=150, eval_strategy="steps", eval_steps=150
    )
    recipe = QATrainingRecipe(cfg).setup()
    untrained = recipe.evaluate()
    result = recipe.train()
    losses = [r["loss"] for r in _read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 150
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    assert result.final_metrics["f1"] > untrained["f1"] + 40, (untrained["f1"], result.final_metrics["f1"])
    assert result.best_step == 150
    best = tmp_path / "run" / "best"
    assert (best / "model.safetensors").is_file() and (best / "kqa_config.json").is_file()
    assert json.loads((best / "metrics.json").read_text())["f1"] == pytest.approx(result.final_metrics["f1"])
    assert (best / "predictions" / "ko" / "predictions.json").is_file()


def test_a_subclass_swaps_stages_through_the_class_attributes(backbone_dir, korean_squad_file, tmp_path):
    """Feature building, answer decoding and the metric are class attributes the recipe really uses."""
    import dataclasses

    from kqa.features import prepare_train_features
    from kqa.metric import score_predictions
    from kqa.postprocess import decode_answers

    def first_two_windows(examples, tokenizer, config, **kwargs):
        features, report = prepare_train_features(examples, tokenizer, config, **kwargs)
        return features.select(range(2)), report

    def first_character_answers(examples, features, start_logits, end_logits, config):
        predictions = decode_answers(examples, features, start_logits, end_logits, config)
        contexts = dict(zip(examples["id"], examples["context"]))
        return {k: dataclasses.replace(p, text=contexts[k][:1], start=0, end=1) for k, p in predictions.items()}

    class SwappedRecipe(QATrainingRecipe):
        build_train_features = staticmethod(first_two_windows)
        decode_answers = staticmethod(first_character_answers)

    cfg = _config(
        backbone_dir, korean_squad_file, tmp_path / "run", eval_strategy="epoch", per_device_train_batch_size=1
    )
    recipe = SwappedRecipe(cfg).setup()
    assert len(recipe.train_features) == 2 and len(recipe.train_dataloader) == 2  # the swapped builder's windows
    report = recipe.train_feature_report  # kept for research code: what feature building did
    assert report.num_features > 2 and report.num_lost_answers == 0
    metrics = recipe.evaluate()
    examples = recipe.eval_sets[0].examples
    expected = score_predictions(examples, {i: c[:1] for i, c in zip(examples["id"], examples["context"])})
    assert metrics["ko/f1"] == pytest.approx(expected.f1)
    assert metrics["ko/exact_match"] == pytest.approx(expected.exact_match)
    assert all(p.text == p_ctx[:1] for p, p_ctx in zip(recipe.last_predictions["ko"].values(), examples["context"]))


class ScriptedRecipe(QATrainingRecipe):
    """Evaluation returns a controlled F1 sequence and records the weights it saw."""

    def __init__(self, config, scores):
        super().__init__(config)
        self.scores, self.snapshots = list(scores), []

    def evaluate(self):
        f1 = self.scores[len(self.snapshots)]
        self.snapshots.append(_weights(self))
        return {"f1": f1, "exact_match": f1 / 2, "ko/f1": f1, "ko/exact_match": f1 / 2, "step": self.state.global_step}


def test_best_checkpoint_is_the_highest_f1_not_the_last(backbone_dir, korean_squad_file, tmp_path):
    from kqa.modeling import QuestionAnsweringModel

    cfg = _config(
        backbone_dir,
        korean_squad_file,
        tmp_path / "run",
        num_train_epochs=3,
        eval_strategy="epoch",
        per_device_train_batch_size=2,
    )
    recipe = ScriptedRecipe(cfg, scores=[10.0, 30.0, 20.0]).setup()
    result = recipe.train()
    assert result.best_metric == 30.0
    assert len(recipe.snapshots) == 3
    saved = QuestionAnsweringModel.from_pretrained(tmp_path / "run" / "best").state_dict()
    for key, value in recipe.snapshots[1].items():
        assert torch.equal(saved[key], value), key
    assert not torch.equal(saved["qa_outputs.weight"], recipe.snapshots[2]["qa_outputs.weight"])
    assert json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())["f1"] == 30.0


def test_lower_is_better_and_early_stopping(backbone_dir, korean_squad_file, tmp_path):
    cfg = _config(
        backbone_dir,
        korean_squad_file,
        tmp_path / "run",
        num_train_epochs=6,
        eval_strategy="epoch",
        per_device_train_batch_size=2,
        metric_for_best_model="f1",
        greater_is_better=False,
        early_stopping_patience=2,
    )
    recipe = ScriptedRecipe(cfg, scores=[50.0, 40.0, 45.0, 41.0, 10.0, 5.0]).setup()
    result = recipe.train()
    assert result.stopped_early
    assert len(recipe.snapshots) == 4  # 40 is best; 45 and 41 do not improve → stop after the 4th
    assert result.best_metric == 40.0
    assert result.best_step == recipe.steps_per_epoch * 2


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(dropout_backbone_dir, korean_squad_file, tmp_path):
    common = dict(
        num_train_epochs=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        eval_strategy="epoch",
        save_strategy="epoch",
        learning_rate=1e-3,
        warmup_ratio=0.2,
    )

    full = QATrainingRecipe(_config(dropout_backbone_dir, korean_squad_file, tmp_path / "full", **common)).setup()
    full_result = full.train()
    full_weights = _weights(full)
    steps_per_epoch = full.steps_per_epoch
    assert steps_per_epoch >= 2
    stop_after = steps_per_epoch + 1  # inside the second epoch

    first = QATrainingRecipe(_config(dropout_backbone_dir, korean_squad_file, tmp_path / "split", **common)).setup()
    partial = first.train(max_steps_this_run=stop_after)
    assert partial.interrupted and partial.global_step == stop_after
    checkpoint = find_latest_checkpoint(tmp_path / "split" / "checkpoints")
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{stop_after}"

    reset_accelerate_state()
    resumed = QATrainingRecipe(
        _config(dropout_backbone_dir, korean_squad_file, tmp_path / "split", resume_from_checkpoint="latest", **common)
    ).setup()
    assert resumed.state.global_step == stop_after and resumed.state.batches_seen_in_epoch > 0
    resumed_result = resumed.train()

    def losses(run):
        return [(r["step"], r["loss"]) for r in _read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r]

    def evals(run):
        return [
            (r["step"], r["eval/f1"], r["eval/ko/loss"])
            for r in _read_jsonl(tmp_path / run / "metrics.jsonl")
            if "eval/f1" in r
        ]

    assert len(losses("full")) == full_result.global_step
    assert losses("split") == losses("full")  # each step once: the records after the checkpoint were dropped
    for checkpoint in (tmp_path / "split" / "checkpoints").iterdir():
        assert "log_history" not in json.loads((checkpoint / STATE_MARKER).read_text())
    assert evals("split") == evals("full")
    assert resumed_result.best_step == full_result.best_step
    resumed_weights = _weights(resumed)
    for key, value in full_weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_fused_adamw_takes_the_same_steps_as_the_for_each_one(tmp_path):
    """The default optimizer is torch's fused AdamW (faster on CPU and GPU); it must be a drop-in: same
    parameter groups (no decay on biases and LayerNorm), same updates as the for-each AdamW."""
    from kqa.modeling import QuestionAnsweringModel
    from kqa.training.optim import build_optimizer

    torch.manual_seed(0)
    config = tiny_bert_config(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    models, optimizers = {}, {}
    for optim in ("adamw_torch_fused", "adamw_torch"):
        torch.manual_seed(0)
        models[optim] = QuestionAnsweringModel.from_config(config)
        train_config = TrainConfig(train_files=["x.json"], optim=optim, learning_rate=1e-2, weight_decay=0.1)
        optimizers[optim] = build_optimizer(models[optim], train_config)
    assert optimizers["adamw_torch_fused"].defaults["fused"] is True
    assert not optimizers["adamw_torch"].defaults["fused"]
    for optimizer in optimizers.values():
        decay, no_decay = optimizer.param_groups
        assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
        assert len(decay["params"]) > 0 and all(p.dim() == 1 for p in no_decay["params"])
    initial = {k: v.detach().clone() for k, v in models["adamw_torch"].named_parameters()}
    ids = torch.randint(4, 64, (4, 12))
    losses = {optim: [] for optim in models}
    shift_invariant = set()  # parameters whose true gradient is 0 (a shift softmax ignores): Adam scales rounding up
    for step in range(5):
        for optim, model in models.items():
            loss = model(
                input_ids=ids, start_positions=torch.tensor([1, 2, 3, 4]), end_positions=torch.tensor([2, 3, 4, 5])
            ).loss
            loss.backward()
            if step == 0 and optim == "adamw_torch":
                shift_invariant = {n for n, p in model.named_parameters() if p.grad.abs().max() < 1e-6}
            optimizers[optim].step()
            optimizers[optim].zero_grad(set_to_none=True)
            losses[optim].append(loss.item())
    assert losses["adamw_torch"][-1] < losses["adamw_torch"][0]
    torch.testing.assert_close(losses["adamw_torch_fused"], losses["adamw_torch"], rtol=1e-5, atol=1e-6)
    fused, for_each = (dict(models[o].named_parameters()) for o in ("adamw_torch_fused", "adamw_torch"))
    for name, value in fused.items():
        assert not torch.equal(value, initial[name]), name
        if name not in shift_invariant:
            torch.testing.assert_close(value, for_each[name], rtol=1e-5, atol=1e-6, msg=name)
    assert len(shift_invariant) < 5  # attention key biases, the head's bias, the LayerNorm bias feeding it


def test_the_recipe_leaves_logging_configuration_to_the_application(
    backbone_dir, korean_squad_file, tmp_path, monkeypatch
):
    import logging

    calls = []
    monkeypatch.setattr(logging, "basicConfig", lambda *args, **kwargs: calls.append(kwargs))
    QATrainingRecipe(_config(backbone_dir, korean_squad_file, tmp_path / "run")).setup()
    assert calls == []

    import kqa.cli.train as train  # the entry point of `kqa train` and train.py

    class Stop(Exception):
        pass

    def stop(config):
        raise Stop

    monkeypatch.setattr(train, "QATrainingRecipe", stop)
    with pytest.raises(Stop):
        train.main(["--config", str(ROOT / "configs" / "tiny-cpu-smoke.yaml")])
    assert len(calls) == 1 and calls[0]["level"] == logging.INFO  # the entry point configures it


def test_partial_checkpoint_is_never_picked_as_latest(tmp_path):
    root = tmp_path / "checkpoints"
    good = root / "checkpoint-4"
    good.mkdir(parents=True)
    (good / STATE_MARKER).write_text("{}")
    (root / "checkpoint-8").mkdir()  # died before the marker was written
    (root / ".tmp-checkpoint-12").mkdir()  # died before the rename
    (root / "checkpoint-2").mkdir()
    (root / "checkpoint-2" / STATE_MARKER).write_text("{}")
    assert find_latest_checkpoint(root) == good
    assert find_latest_checkpoint(tmp_path / "missing") is None


def test_checkpoint_rotation_keeps_the_newest(backbone_dir, korean_squad_file, tmp_path):
    cfg = _config(
        backbone_dir,
        korean_squad_file,
        tmp_path / "run",
        max_train_steps=6,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        per_device_train_batch_size=2,
    )
    QATrainingRecipe(cfg).setup().train()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["checkpoint-5", "checkpoint-6"]
    assert (tmp_path / "run" / "train_config.yaml").is_file()


def test_non_finite_loss_stops_the_run_with_the_step(backbone_dir, korean_squad_file, tmp_path):
    # The guard is read only at logging steps (no per-step sync), yet names the step that went bad.
    cfg = _config(
        backbone_dir,
        korean_squad_file,
        tmp_path / "run",
        max_train_steps=5,
        per_device_train_batch_size=2,
        logging_steps=5,
    )
    recipe = QATrainingRecipe(cfg).setup()
    original_forward = recipe.model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    recipe.model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="optimizer step 3"):
        recipe.train()


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_wandb_tracking_needs_no_network(backbone_dir, korean_squad_file, tmp_path, monkeypatch, mode):
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # wandb keeps its settings per process: start from none, as a new job would
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _config(
        backbone_dir,
        korean_squad_file,
        tmp_path / "run",
        max_train_steps=2,
        report_to="wandb",
        per_device_train_batch_size=2,
        eval_strategy="steps",
        eval_steps=2,
        run_name="t",
    )
    result = QATrainingRecipe(cfg).setup().train()
    assert result.global_step == 2
    assert os.environ["WANDB_MODE"] == mode  # the user's choice is never overridden
    wandb_dir = tmp_path / "run" / "wandb"
    runs = sorted(p.name for p in wandb_dir.glob("*run-*")) if wandb_dir.exists() else []
    if mode == "offline":
        assert len(runs) == 1 and runs[0].startswith("offline-run-")
        assert list((wandb_dir / runs[0]).glob("*.wandb"))  # the logged history, to `wandb sync` later
    else:
        assert runs == []  # disabled: nothing written, nothing sent
    assert [r["step"] for r in _read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r] == [1, 2]
    wandb.teardown()


def _netrc_without_wandb_environment(tmp_path: Path, monkeypatch, host: str) -> Path:
    """A netrc file (as `wandb login` writes it) with an entry for `host`, and no wandb credentials or
    server in the environment."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine {host}\n  login user\n  password 0123456789abcdef\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    return netrc_file


def test_wandb_credentials_from_netrc_or_environment_are_recognised(tmp_path, monkeypatch):
    """A user logged in with `wandb login` (a netrc entry) is not forced offline; no credentials at all is."""
    from kqa.training.tracking import wandb_credentials_exist

    netrc_file = _netrc_without_wandb_environment(tmp_path, monkeypatch, "example.org")
    assert not wandb_credentials_exist()
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    assert wandb_credentials_exist()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a self-hosted server: its own entry
    assert not wandb_credentials_exist()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_credentials_exist()


def test_only_a_user_without_any_credentials_is_switched_to_offline(tmp_path, monkeypatch):
    from kqa.training.tracking import default_wandb_to_offline

    monkeypatch.delenv("WANDB_MODE", raising=False)
    _netrc_without_wandb_environment(tmp_path, monkeypatch, "api.wandb.ai")
    default_wandb_to_offline()
    assert "WANDB_MODE" not in os.environ  # logged in with `wandb login`: online, as wandb decides
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    default_wandb_to_offline()
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    default_wandb_to_offline()
    assert os.environ["WANDB_MODE"] == "disabled"


def test_mixed_precision_unset_follows_accelerate_and_explicit_values_win(
    backbone_dir, korean_squad_file, tmp_path, monkeypatch
):
    """`accelerate config` / `accelerate launch --mixed_precision` reach the recipe through the environment."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    unset = QATrainingRecipe(_config(backbone_dir, korean_squad_file, tmp_path / "a", mixed_precision=None)).setup()
    assert unset.accelerator.mixed_precision == "bf16"
    reset_accelerate_state()
    explicit = QATrainingRecipe(_config(backbone_dir, korean_squad_file, tmp_path / "b", mixed_precision="no")).setup()
    assert explicit.accelerator.mixed_precision == "no"


@pytest.mark.parametrize("features, warned", [(["AVX2"], True), (["AVX2", "AVX512F", "AVX512BF16"], False)])
def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(
    backbone_dir, korean_squad_file, tmp_path, monkeypatch, caplog, features, warned
):
    import kqa.inference.runtimes as runtimes

    monkeypatch.setattr(runtimes, "cpu_features", lambda: features)
    with caplog.at_level(logging.WARNING, logger="kqa.training.recipe"):
        recipe = QATrainingRecipe(_config(backbone_dir, korean_squad_file, tmp_path, mixed_precision="bf16")).setup()
    assert recipe.accelerator.mixed_precision == "bf16"  # a warning, not a refusal
    assert ("without native bf16" in caplog.text) == warned
    reset_accelerate_state()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kqa.training.recipe"):
        QATrainingRecipe(_config(backbone_dir, korean_squad_file, tmp_path / "fp32", mixed_precision="no")).setup()
    assert "without native bf16" not in caplog.text
    reset_accelerate_state()


@pytest.mark.parametrize("cuda, bf16, expected", [(False, False, "no"), (True, True, "bf16"), (True, False, "fp16")])
def test_auto_mixed_precision_is_bf16_where_supported_else_fp16_on_cuda(monkeypatch, cuda, bf16, expected):
    from kqa.training.config import resolve_mixed_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision(None) is None  # Accelerate's own setting
    assert resolve_mixed_precision("fp16") == "fp16"


def test_evaluate_model_follows_accelerates_mixed_precision_when_unset(
    trained_model_dir, korean_squad_file, monkeypatch
):
    from kqa.training.evaluation import evaluate_model

    def evaluate(**kwargs):  # each evaluate.py run is a new process: a new Accelerate state
        reset_accelerate_state()
        return evaluate_model(trained_model_dir, korean_squad_file, disable_tqdm=True, **kwargs)

    fp32 = evaluate()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    bf16 = evaluate()
    explicit = evaluate(mixed_precision="no")
    assert bf16.loss != fp32.loss and bf16.loss == pytest.approx(fp32.loss, rel=0.05)  # bf16 rounding, same model
    assert explicit.loss == fp32.loss


def test_without_evaluation_the_final_model_is_saved_loadable(backbone_dir, korean_squad_file, tmp_path):
    from kqa.inference import QuestionAnswerer
    from kqa.training.evaluation import evaluate_model

    cfg = _config(
        backbone_dir, korean_squad_file, tmp_path / "run", max_train_steps=3, eval_strategy="no", save_strategy="no"
    )
    recipe = QATrainingRecipe(cfg).setup()
    recipe.train()
    final = tmp_path / "run" / "final"
    assert not (tmp_path / "run" / "best").exists() and not (final / "metrics.json").exists()
    saved = QuestionAnswerer.from_pretrained(final, device="cpu")
    for key, value in _weights(recipe).items():
        assert torch.equal(saved.model.state_dict()[key], value), key
    assert saved.settings == recipe.settings
    answer = saved("대한민국의 수도는 어디인가?", "대한민국의 수도는 서울이다.")
    assert answer.text and "대한민국의 수도는 서울이다."[answer.start : answer.end] == answer.text
    assert evaluate_model(final, korean_squad_file, disable_tqdm=True).result.total == 6


def test_the_saved_model_holds_the_gathered_state_dict(backbone_dir, korean_squad_file, tmp_path, monkeypatch):
    """Under FSDP / ZeRO-3 a process's module holds a shard: the saved weights must be the full state dict
    that `accelerator.get_state_dict` gathers, not the module's own tensors."""
    cfg = _config(backbone_dir, korean_squad_file, tmp_path / "run", max_train_steps=1)
    recipe = QATrainingRecipe(cfg).setup()
    recipe.train()
    full = {k: v.clone() for k, v in _weights(recipe).items()}
    model = recipe.accelerator.unwrap_model(recipe.model)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()  # what this process would hold of a sharded parameter: not the weights
    monkeypatch.setattr(recipe.accelerator, "get_state_dict", lambda module, unwrap=True: full)
    recipe.save_best({"f1": 1.0, "step": 1})
    from kqa.modeling import QuestionAnsweringModel

    saved = QuestionAnsweringModel.from_pretrained(tmp_path / "run" / "best").state_dict()
    for key, value in full.items():
        assert torch.equal(saved[key], value), key


def test_one_model_gives_byte_identical_predictions_through_every_path(trained_run, korean_squad_file, tmp_path):
    """The loop's evaluation, evaluate.py and QuestionAnswerer are one prediction path. (Same batch size
    as the run's evaluation: another batching pads to other widths, which moves the last float digits.)"""
    from kqa.data import load_squad_json
    from kqa.inference import QuestionAnswerer
    from kqa.postprocess import write_predictions
    from kqa.training.evaluation import evaluate_model

    best = trained_run / "best"
    from_loop = best / "predictions" / "ko"
    evaluate_model(best, korean_squad_file, output_dir=tmp_path / "eval", batch_size=4, disable_tqdm=True)
    examples, _ = load_squad_json(korean_squad_file)
    qa = QuestionAnswerer.from_pretrained(best, device="cpu", batch_size=4)
    write_predictions(qa.predict_rows(examples.to_list()), tmp_path / "qa")
    for name in ("predictions.json", "nbest_predictions.json"):
        expected = (from_loop / name).read_bytes()
        assert len(json.loads(expected)) == 6
        assert (tmp_path / "eval" / name).read_bytes() == expected, name
        assert (tmp_path / "qa" / name).read_bytes() == expected, name


def test_training_logs_throughput_in_tokens_and_peak_memory(trained_run):
    records = [r for r in _read_jsonl(trained_run / "metrics.jsonl") if "loss" in r]
    assert len(records) == 60
    for record in records:
        assert record["samples_per_second"] > 0 and record["peak_memory_mb"] > 0
        assert 0 < record["tokens_per_second"] <= record["padded_tokens_per_second"]
    assert any(r["tokens_per_second"] < r["padded_tokens_per_second"] for r in records)  # padding is counted apart


def test_a_new_run_into_an_old_output_directory_keeps_the_logs_apart(backbone_dir, korean_squad_file, tmp_path):
    cfg = _config(backbone_dir, korean_squad_file, tmp_path / "run", max_train_steps=2)
    QATrainingRecipe(cfg).setup().train()
    reset_accelerate_state()
    QATrainingRecipe(dataclasses.replace(cfg, max_train_steps=3)).setup().train()
    steps = [r["step"] for r in _read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3]
    older = [r["step"] for r in _read_jsonl(tmp_path / "run" / "metrics.previous-1.jsonl") if "loss" in r]
    assert older == [1, 2]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _json_tail(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def test_two_cpu_processes_give_the_same_metrics_as_one(trained_model_dir, korean_squad_file, tmp_path):
    # 6 questions, batch 4 per process: the last batch is ragged, so gather_for_metrics must drop
    # the padding duplicates for the scores to match.
    base = [
        str(ROOT / "evaluate.py"),
        "--model",
        str(trained_model_dir),
        "--data_file",
        str(korean_squad_file),
        "--per_device_eval_batch_size",
        "4",
        "--disable_tqdm",
    ]
    one = _json_tail(_run([sys.executable, *base], tmp_path))
    two = _json_tail(
        _run(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                "2",
                "--cpu",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                *base,
            ],
            tmp_path,
        )
    )
    assert one["total"] == two["total"] == 6
    assert two["exact_match"] == pytest.approx(one["exact_match"])
    assert two["f1"] == pytest.approx(one["f1"])


def test_train_py_runs_under_accelerate_launch_with_two_processes(backbone_dir, korean_squad_file, tmp_path):
    out = tmp_path / "ddp"
    stdout = _run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "2",
            "--cpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(ROOT / "train.py"),
            "--model_name_or_path",
            str(backbone_dir),
            "--train_files",
            str(korean_squad_file),
            "--validation_files",
            f"ko={korean_squad_file}",
            "--dataset_name",
            "none",
            "--max_seq_length",
            "64",
            "--doc_stride",
            "16",
            "--max_query_length",
            "16",
            "--per_device_train_batch_size",
            "2",
            "--max_train_steps",
            "3",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "3",
            "--save_strategy",
            "steps",
            "--save_steps",
            "3",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "--mixed_precision",
            "no",
        ],
        tmp_path,
    )
    summary = _json_tail(stdout)
    assert summary["global_step"] == 3
    assert (out / "best" / "model.safetensors").is_file()
    checkpoint = find_latest_checkpoint(out / "checkpoints")  # verified: every file against the marker
    assert checkpoint.name == "checkpoint-3"
    processes = json.loads((checkpoint / STATE_MARKER).read_text())["num_processes"]
    assert len(list(checkpoint.glob("rng_state_*.json"))) == processes  # each process's own random state


def test_two_processes_resume_exactly_each_from_its_own_random_state(
    dropout_backbone_dir, korean_squad_file, tmp_path, monkeypatch
):
    """Two CPU processes under torchrun (gloo; `ACCELERATE_USE_CPU` makes Accelerate use it): each writes
    its own RNG state into the checkpoint, and a run resumed from checkpoint-2 ends as the uninterrupted
    one did (metrics and bit-identical weights)."""
    import shutil

    from safetensors.torch import load_file

    flags = {
        "model_name_or_path": str(dropout_backbone_dir),
        "train_files": str(korean_squad_file),
        "validation_files": f"ko={korean_squad_file}",
        "dataset_name": "none",
        "max_seq_length": "64",
        "doc_stride": "16",
        "max_query_length": "16",
        "per_device_train_batch_size": "1",
        "max_train_steps": "4",
        "eval_strategy": "steps",
        "eval_steps": "2",
        "save_strategy": "steps",
        "save_steps": "2",
        "logging_steps": "1",
        "attention_dropout": "model",
        "mixed_precision": "no",
    }
    argv = [item for key, value in flags.items() for item in (f"--{key}", value)] + ["--disable_tqdm"]
    # --standalone: a rendezvous on a free local port, not the default 29500 another job may hold
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    torchrun.append(str(ROOT / "train.py"))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    _run([*torchrun, *argv, "--output_dir", str(tmp_path / "full")], tmp_path)
    checkpoint = tmp_path / "full" / "checkpoints" / "checkpoint-2"
    assert json.loads((checkpoint / STATE_MARKER).read_text())["num_processes"] == 2
    assert {"rng_state_0.json", "rng_state_1.json"} <= {p.name for p in checkpoint.iterdir()}
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "full", split)
    shutil.rmtree(split / "checkpoints" / "checkpoint-4")
    shutil.rmtree(split / "final")
    _run([*torchrun, *argv, "--output_dir", str(split), "--resume_from_checkpoint", "latest"], tmp_path)
    timing = {"samples_per_second", "tokens_per_second", "padded_tokens_per_second", "peak_memory_mb"}
    records = {
        run: [{k: v for k, v in r.items() if k not in timing} for r in _read_jsonl(tmp_path / run / "metrics.jsonl")]
        for run in ("full", "split")
    }
    assert records["split"] == records["full"]
    for name in ("best", "final"):
        full, resumed = (load_file(str(tmp_path / run / name / "model.safetensors")) for run in ("full", "split"))
        assert all(torch.equal(resumed[key], value) for key, value in full.items()), name


REMOTE_CONFIG = """from transformers import BertConfig


class RemoteBertConfig(BertConfig):
    model_type = "kqa-remote-bert"
"""
REMOTE_MODEL = """from transformers import BertModel

from .configuration_remote import RemoteBertConfig


class RemoteBertModel(BertModel):
    config_class = RemoteBertConfig

    def __init__(self, config, add_pooling_layer=False):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
"""


def test_an_encoder_with_remote_code_trains_evaluates_serves_and_continues(tiny_tokenizer, korean_squad_file, tmp_path):
    """`trust_remote_code` reaches every loader: training, evaluate_model, QuestionAnswerer, and training
    on from a saved kqa model. Without it each refuses to run the code."""
    from kqa.inference import QuestionAnswerer
    from kqa.training.evaluation import evaluate_model

    backbone = tmp_path / "remote"
    _make_backbone_dir(backbone, tiny_tokenizer)
    (backbone / "configuration_remote.py").write_text(REMOTE_CONFIG)
    (backbone / "modeling_remote.py").write_text(REMOTE_MODEL)
    config = json.loads((backbone / "config.json").read_text())
    config.update(
        model_type="kqa-remote-bert",
        architectures=["RemoteBertModel"],
        auto_map={
            "AutoConfig": "configuration_remote.RemoteBertConfig",
            "AutoModel": "modeling_remote.RemoteBertModel",
        },
    )
    (backbone / "config.json").write_text(json.dumps(config))

    def reset():
        reset_accelerate_state()

    cfg = _config(
        backbone,
        korean_squad_file,
        tmp_path / "run",
        max_train_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        trust_remote_code=True,
    )
    recipe = QATrainingRecipe(cfg).setup()
    assert type(recipe.accelerator.unwrap_model(recipe.model).backbone).__name__ == "RemoteBertModel"
    logged = recipe.train().final_metrics
    best = tmp_path / "run" / "best"
    reset()
    evaluation = evaluate_model(best, korean_squad_file, trust_remote_code=True, disable_tqdm=True)
    assert evaluation.result.f1 == pytest.approx(logged["ko/f1"])
    qa = QuestionAnswerer.from_pretrained(best, device="cpu", trust_remote_code=True)
    assert type(qa.model.backbone).__name__ == "RemoteBertModel"
    assert qa("대한민국의 수도는 어디인가?", "대한민국의 수도는 서울이다.").start >= 0
    reset()
    again = QATrainingRecipe(
        dataclasses.replace(cfg, model_name_or_path=str(best), output_dir=str(tmp_path / "again"))
    ).setup()
    for key, value in _weights(again).items():
        assert torch.equal(qa.model.state_dict()[key], value), key
    reset()
    with pytest.raises(ValueError, match="trust_remote_code"):
        QuestionAnswerer.from_pretrained(best, device="cpu")
    with pytest.raises(ValueError, match="trust_remote_code"):
        evaluate_model(best, korean_squad_file, disable_tqdm=True)


# ---- attention dropout: the fused CPU attention kernel -------------------------------------------------


def _sdpa_ops(model, batch) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**batch).loss.backward()
    return {event.key for event in prof.key_averages()}


def test_attention_dropout_auto_trains_on_the_fused_cpu_kernel(dropout_backbone_dir, korean_squad_file, tmp_path):
    """The default (`auto`) turns attention dropout off on CPU, where torch's fused attention kernel has no
    dropout: the training step then runs that kernel instead of the unfused math path. `model` keeps the
    backbone's 0.1 (and the math path); a number is used as given."""
    fused = "aten::_scaled_dot_product_flash_attention_for_cpu"
    runs = {}
    for setting in ("auto", "model", "0.05"):
        recipe = QATrainingRecipe(
            _config(dropout_backbone_dir, korean_squad_file, tmp_path / setting, attention_dropout=setting)
        ).setup()
        runs[setting] = recipe
    assert TrainConfig(train_files=["x.json"]).attention_dropout == "auto"
    assert runs["auto"].model.config.attention_probs_dropout_prob == 0.0
    assert runs["model"].model.config.attention_probs_dropout_prob == 0.1
    assert runs["0.05"].model.config.attention_probs_dropout_prob == 0.05
    assert runs["auto"].model.config.hidden_dropout_prob == 0.1  # only attention dropout changes
    batch = next(iter(runs["auto"].train_dataloader))
    assert fused in _sdpa_ops(runs["auto"].model.train(), batch)
    assert fused not in _sdpa_ops(runs["model"].model.train(), batch)
    # The saved model's config records what it was trained with.
    runs["auto"].train()
    saved = json.loads((tmp_path / "auto" / "final" / "config.json").read_text())
    assert saved["attention_probs_dropout_prob"] == 0.0


def test_attention_dropout_resolution_and_validation():
    assert TrainConfig(train_files=["x"]).resolved_attention_dropout("cpu") == 0.0
    assert TrainConfig(train_files=["x"]).resolved_attention_dropout("cuda") is None  # GPU kernels have dropout
    assert TrainConfig(train_files=["x"], attention_dropout="model").resolved_attention_dropout("cpu") is None
    assert TrainConfig(train_files=["x"], attention_dropout=0.2).resolved_attention_dropout("cuda") == 0.2
    for bad in ("sometimes", 1.0, -0.1):
        with pytest.raises(ValueError, match="attention_dropout"):
            TrainConfig(train_files=["x"], attention_dropout=bad)


def test_attention_dropout_names_the_model_without_one(tmp_path):
    from transformers import BertConfig, DistilBertConfig, PretrainedConfig

    from kqa.modeling import NoAttentionDropoutError, attention_dropout_of, set_attention_dropout

    for config in (BertConfig(), DistilBertConfig()):  # attention_probs_dropout_prob / attention_dropout
        set_attention_dropout(config, 0.3)
        assert attention_dropout_of(config) == 0.3
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        set_attention_dropout(BertConfig(), 1.0)
    config = PretrainedConfig()
    with pytest.raises(NoAttentionDropoutError, match="my-encoder"):
        set_attention_dropout(config, 0.0, "my-encoder")
    assert attention_dropout_of(config) is None


# ---- layer-wise learning-rate decay ------------------------------------------------------------------


def test_layer_lr_decay_scales_each_layer_from_the_head_down():
    from kqa.modeling import QuestionAnsweringModel
    from kqa.training.optim import build_optimizer, layer_depth

    config = tiny_bert_config(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = QuestionAnsweringModel.from_config(config)
    optimizer = build_optimizer(
        model, TrainConfig(train_files=["x"], learning_rate=1.0, layer_lr_decay=0.5, weight_decay=0.1)
    )
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    expected_depth = {
        "qa_outputs.weight": 4,
        "bert.encoder.layer.2.output.dense.weight": 3,
        "bert.encoder.layer.0.attention.self.query.weight": 1,
        "bert.embeddings.word_embeddings.weight": 0,
    }
    named = dict(model.named_parameters())
    for name, depth in expected_depth.items():
        assert layer_depth(name, 3) == depth
        assert lr_of[id(named[name])] == (0.5 ** (4 - depth), 0.1)
    assert lr_of[id(named["bert.encoder.layer.1.output.LayerNorm.bias"])] == (0.25, 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)
    # The schedule scales every group's own rate.
    from kqa.training.optim import build_scheduler

    scheduler = build_scheduler(optimizer, TrainConfig(train_files=["x"], warmup_ratio=0.0), 10)
    optimizer.step()
    scheduler.step()
    rates = sorted({g["lr"] for g in optimizer.param_groups})
    assert rates == pytest.approx([0.9 * 0.5**k for k in (4, 3, 2, 1, 0)])
    # 1.0 (the default) is the plain two-group AdamW.
    plain = build_optimizer(model, TrainConfig(train_files=["x"], learning_rate=1.0))
    assert [g["lr"] for g in plain.param_groups] == [1.0, 1.0]
    with pytest.raises(ValueError, match="layer_lr_decay"):
        TrainConfig(train_files=["x"], layer_lr_decay=0.0)


def test_a_run_with_negatives_trains_on_them_and_may_answer_nothing(backbone_dir, korean_squad_file, tmp_path, caplog):
    """Negatives on: the train set gains unanswerable questions (logged), labelled CLS, and the saved model
    predicts with the null answer allowed."""
    cfg = _config(
        backbone_dir,
        korean_squad_file,
        tmp_path / "run",
        max_train_steps=20,
        eval_strategy="steps",
        eval_steps=20,
        version_2_with_negative=True,
        negative_ratio=0.5,
        negative_kind="hard",
    )
    with caplog.at_level("INFO", logger="kqa.training.inputs"):
        recipe = QATrainingRecipe(cfg).setup()
    added = recipe.train_feature_report.num_unanswerable_examples
    assert added > 0 and f"{added} hard negatives added (ratio 0.5, seed 13) to 6 questions" in caplog.text
    negative_ids = {i for i in recipe.train_features["example_id"] if i.endswith("-neg")}
    assert len(negative_ids) == added
    result = recipe.train()
    assert result.best_step == 20
    saved = json.loads((tmp_path / "run" / "best" / "kqa_config.json").read_text(encoding="utf-8"))
    assert saved["postprocess"]["version_2_with_negative"] is True


# ---- frozen word embeddings ---------------------------------------------------------------------------


def test_frozen_word_embeddings_stay_pretrained_while_the_rest_learns(backbone_dir, korean_squad_file, tmp_path):
    cfg = _config(backbone_dir, korean_squad_file, tmp_path / "run", max_train_steps=3, freeze_word_embeddings=True)
    recipe = QATrainingRecipe(cfg).setup()
    before = _weights(recipe)
    model = recipe.accelerator.unwrap_model(recipe.model)
    embedding = model.backbone.get_input_embeddings().weight
    optimized = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    assert id(embedding) not in optimized  # no AdamW state or update for the matrix
    assert len(optimized) == sum(p.requires_grad for p in model.parameters()) == len(list(model.parameters())) - 1
    recipe.train()
    after = _weights(recipe)
    name = next(k for k in before if k.endswith("word_embeddings.weight"))
    assert torch.equal(after[name], before[name])
    assert not torch.equal(after["qa_outputs.weight"], before["qa_outputs.weight"])
    moved = [k for k in before if "position_embeddings" in k or "layer.0.attention.self.query.weight" in k]
    assert moved and all(not torch.equal(after[k], before[k]) for k in moved)  # only the word matrix is frozen
    # The default trains it.
    recipe = QATrainingRecipe(_config(backbone_dir, korean_squad_file, tmp_path / "run2", max_train_steps=3)).setup()
    before = _weights(recipe)
    recipe.train()
    assert not torch.equal(_weights(recipe)[name], before[name])
