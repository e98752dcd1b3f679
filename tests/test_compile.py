"""`compile: true` (TrainConfig) and `QuestionAnswerer(compile=True)`: torch.compile changes how the model runs,
not what it computes nor what is saved.

Inductor compiles C++ on the CPU, about a minute and a half for a tiny BERT's forward and backward on a busy
2-core machine, so the default run compiles with the `aot_eager` backend: the same graph capture (dynamo),
graph breaks, recompiles on new shapes and AOTAutograd's backward, without inductor's code generation. The
`slow` run repeats the training test with inductor, the backend `compile: true` uses.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from kqa.inference import QuestionAnswerer
from kqa.modeling import QuestionAnsweringModel
from kqa.testing import KOREAN_EXAMPLES, korean_squad_json, reset_accelerate_state, tiny_bert_config
from kqa.training.checkpoints import find_latest_checkpoint
from kqa.training.config import TrainConfig, parse_config
from kqa.training.recipe import QATrainingRecipe

STEPS = 4
LEARNING_RATE = 3e-3
# fp32 on the CPU: a compiled graph may fuse and reorder reductions, so losses agree to rounding of that order
# (inductor: the same to 7 digits here). Weights: Adam moves each one by about the learning rate per step
# whatever its gradient's size, so where a gradient is near zero that rounding can turn an update around
# (seen: 2e-4 after 4 steps with inductor); a quarter of one step's move is still far under a wrong gradient's.
LOSS_RTOL = 1e-4
WEIGHT_ATOL = LEARNING_RATE / 4
# The span head's bias adds one constant to every position's logit, which the softmax over positions ignores:
# its gradient is 0 up to rounding, and Adam turns that rounding into whole steps either way. Not compared.
NOISE_ONLY = {"qa_outputs.bias"}


@pytest.fixture(autouse=True)
def fresh_state():
    """Accelerate's process-wide singletons and dynamo's caches: each run starts from a clean slate."""
    torch._dynamo.reset()
    yield
    reset_accelerate_state()
    torch._dynamo.reset()


@contextlib.contextmanager
def compile_backend(backend: str):
    """Make nn.Module.compile (what the recipe and QuestionAnswerer call) use `backend`."""
    original = torch.nn.Module.compile

    def compile_with_backend(self, *args, **kwargs):
        kwargs.setdefault("backend", backend)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Module, "compile", compile_with_backend)
        yield


@pytest.fixture
def tiny_run_inputs(tmp_path, tiny_tokenizer) -> tuple[Path, Path]:
    """A one-layer random BERT (the smallest graph to compile) and the hand-written Korean examples."""
    from transformers import BertModel

    backbone = tmp_path / "backbone"
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(tiny_bert_config(len(tiny_tokenizer), **shape), add_pooling_layer=False).save_pretrained(backbone)
    tiny_tokenizer.save_pretrained(backbone)
    data = tmp_path / "korean.json"
    data.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    return backbone, data


def train(backbone: Path, data: Path, output_dir: Path, compile: bool) -> tuple[list[float], QATrainingRecipe]:
    config = TrainConfig.from_flat(
        model_name_or_path=str(backbone),
        train_files=[str(data)],
        dataset_name=None,
        max_seq_length=64,
        doc_stride=16,
        max_query_length=16,
        per_device_train_batch_size=4,
        learning_rate=LEARNING_RATE,
        warmup_ratio=0.0,
        max_train_steps=STEPS,
        mixed_precision="no",
        eval_strategy="no",
        save_strategy="steps",
        save_steps=STEPS,
        logging_steps=1,
        output_dir=str(output_dir),
        disable_tqdm=True,
        seed=13,
        compile=compile,
    )
    recipe = QATrainingRecipe(config).setup()
    recipe.train()
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [record["loss"] for record in map(json.loads, lines) if "loss" in record]
    return losses, recipe


def saved_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def assert_compiled_run_matches_eager(tmp_path, backbone: Path, data: Path) -> None:
    eager_losses, eager = train(backbone, data, tmp_path / "eager", compile=False)
    eager_weights = saved_tensors(tmp_path / "eager" / "final" / "model.safetensors")
    reset_accelerate_state()
    torch._dynamo.utils.counters.clear()
    compiled_losses, compiled = train(backbone, data, tmp_path / "compiled", compile=True)

    assert compiled.model._compiled_call_impl is not None  # compiled in place: the same module, same type
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # and dynamo really captured graphs
    assert len(compiled_losses) == len(eager_losses) == STEPS
    assert compiled_losses == pytest.approx(eager_losses, rel=LOSS_RTOL)

    # final/ and the training checkpoint hold plain keys (no `_orig_mod.`), and the weights load into an
    # eager model.
    final = tmp_path / "compiled" / "final"
    weights = saved_tensors(final / "model.safetensors")
    assert set(weights) == set(eager_weights)
    checkpoint = find_latest_checkpoint(tmp_path / "compiled" / "checkpoints")
    assert checkpoint is not None
    checkpoint_keys = set(saved_tensors(next(checkpoint.glob("*.safetensors"))))
    assert not any("_orig_mod" in key for key in checkpoint_keys | set(weights))
    reloaded = QuestionAnsweringModel.from_pretrained(final)
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
        if key not in NOISE_ONLY:
            torch.testing.assert_close(value, eager_weights[key], rtol=0, atol=WEIGHT_ATOL, msg=key)


def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path, tiny_run_inputs):
    with compile_backend("aot_eager"):
        assert_compiled_run_matches_eager(tmp_path, *tiny_run_inputs)


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager(tmp_path, tiny_run_inputs):
    assert_compiled_run_matches_eager(tmp_path, *tiny_run_inputs)


def test_compile_setting_from_yaml_and_flags(tmp_path):
    assert TrainConfig(train_files=["x.json"]).compile is False
    config = tmp_path / "c.yaml"
    config.write_text("train_files: [x.json]\ncompile: true\n", encoding="utf-8")
    assert parse_config(["--config", str(config)]).compile is True
    assert parse_config(["--config", str(config), "--compile", "false"]).compile is False
    assert parse_config(["--train_files", "x.json", "--compile"]).compile is True


def test_compiled_answerer_gives_the_eager_answers(tmp_path, tiny_run_inputs):
    backbone, _ = tiny_run_inputs
    from transformers import AutoTokenizer

    model_dir = tmp_path / "model"
    torch.manual_seed(1)
    QuestionAnsweringModel.from_backbone(str(backbone)).save_pretrained(
        model_dir,
        tokenizer=AutoTokenizer.from_pretrained(str(backbone)),
        kqa_config={"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16},
    )
    questions = [ex["question"] for ex in KOREAN_EXAMPLES[:3]]
    contexts = [ex["context"] for ex in KOREAN_EXAMPLES[:3]]
    eager = QuestionAnswerer.from_pretrained(model_dir, device="cpu")(questions, contexts)
    with compile_backend("aot_eager"):
        qa = QuestionAnswerer.from_pretrained(model_dir, device="cpu", compile=True)
        compiled = qa(questions, contexts)
    assert qa.model._compiled_call_impl is not None and isinstance(qa.model, QuestionAnsweringModel)
    assert [a.text for a in compiled] == [a.text for a in eager]
    assert [a.score for a in compiled] == pytest.approx([a.score for a in eager], rel=LOSS_RTOL)
    with pytest.raises(ValueError, match="torch backend"):
        QuestionAnswerer.from_pretrained(model_dir, backend="torch-int8", compile=True)
