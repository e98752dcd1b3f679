"""Training survives the faults users hit: a process killed at any moment, a full disk while saving, a
truncated or corrupt checkpoint. Each run is `train.py` on a tiny random BERT in a subprocess; the
killed runs are resumed with `--resume_from_checkpoint latest` and compared with a run that was never
interrupted (bitwise on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kqa.testing import korean_squad_json, reset_accelerate_state, tiny_bert_config

ROOT = Path(__file__).resolve().parent.parent
TIMING_KEYS = {"samples_per_second", "tokens_per_second", "padded_tokens_per_second", "peak_memory_mb"}
# 10 optimizer steps (more than one epoch), evaluations at 2, 4, …, checkpoints at 3, 6, 9.
TRAIN_FLAGS = {
    "dataset_name": "none",
    "max_seq_length": "64",
    "doc_stride": "16",
    "max_query_length": "16",
    "max_answer_length": "10",
    "per_device_train_batch_size": "2",
    "per_device_eval_batch_size": "4",
    "learning_rate": "1e-3",
    "warmup_ratio": "0.2",
    "max_train_steps": "10",
    "eval_strategy": "steps",
    "eval_steps": "2",
    "save_strategy": "steps",
    "save_steps": "3",
    "save_total_limit": "3",
    "logging_steps": "1",
    "mixed_precision": "no",
    "attention_dropout": "model",  # dropout everywhere: the losses depend on the restored RNG state
    "report_to": "none",
    "seed": "13",
}

# The child: train.py's main, with a pause or a file-size limit at a chosen moment, so that the parent can
# kill it (or the disk can fill) exactly there. FAULT_PLAN is JSON: {"pause_in": "evaluation" |
# "checkpoint_write", "pause_at": n, "signal_file": path} or {"fsize_limit_in": "save_checkpoint" |
# "save_best", "at_call": n, "limit": bytes} or {"forbid_unpickling": true} (every resumed run: torch.load
# and pickle.load(s) raise).
CHILD = r"""
import json, os, resource, signal, sys, time
import kqa.training.recipe as recipe_module
from kqa.training.recipe import QATrainingRecipe

plan = json.loads(os.environ["FAULT_PLAN"])
calls = {"n": 0}

if plan.get("forbid_unpickling"):
    import pickle, torch
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")
    pickle.load = pickle.loads = torch.load = refuse

def pause_here():
    calls["n"] += 1
    if calls["n"] == plan["pause_at"]:
        open(plan["signal_file"], "w").close()
        time.sleep(120)  # the parent kills the process now

if plan.get("pause_in") == "evaluation":
    inner_predict = recipe_module.predict_and_score
    def predict_and_score(*args, **kwargs):
        pause_here()
        return inner_predict(*args, **kwargs)
    recipe_module.predict_and_score = predict_and_score
elif plan.get("pause_in") == "checkpoint_write":
    import safetensors.torch  # save_model, a checkpoint's first file, writes through save_file
    inner_save_file = safetensors.torch.save_file
    def save_file(tensors, filename, *args, **kwargs):
        result = inner_save_file(tensors, filename, *args, **kwargs)
        if ".tmp-checkpoint-" in str(filename) and str(filename).endswith("model.safetensors"):
            pause_here()  # the pause_at-th checkpoint has its weights written, nothing else yet
        return result
    safetensors.torch.save_file = save_file
elif plan.get("fsize_limit_in"):
    target = getattr(QATrainingRecipe, plan["fsize_limit_in"])
    def limited(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == plan["at_call"]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (plan["limit"], resource.RLIM_INFINITY))
        return target(self, *args, **kwargs)
    setattr(QATrainingRecipe, plan["fsize_limit_in"], limited)
    import kqa.training.state
    kqa.training.state.is_improvement = lambda *args: True  # every evaluation saves best/

sys.path.insert(0, os.getcwd())
import train
sys.exit(train.main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_tokenizer) -> dict[str, str]:
    """A tiny BERT backbone with dropout and the hand-written Korean SQuAD file."""
    from transformers import BertModel

    root = tmp_path_factory.mktemp("fault_inputs")
    data_file = root / "korean.json"
    data_file.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    backbone = root / "backbone"
    torch.manual_seed(0)
    config = tiny_bert_config(len(tiny_tokenizer), hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    BertModel(config, add_pooling_layer=False).save_pretrained(backbone)
    tiny_tokenizer.save_pretrained(backbone)
    return {"model_name_or_path": str(backbone), "train_files": str(data_file), "validation_files": f"ko={data_file}"}


def _argv(inputs: dict[str, str], output_dir: Path, **overrides: str) -> list[str]:
    flags = {**TRAIN_FLAGS, **inputs, "output_dir": str(output_dir), **overrides}
    return [item for key, value in flags.items() for item in (f"--{key}", value)] + ["--disable_tqdm"]


def _start(argv: list[str], plan: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", CHILD, *argv] if plan else [sys.executable, str(ROOT / "train.py"), *argv]
    env = _env(FAULT_PLAN=json.dumps(plan)) if plan else _env()
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _train(argv: list[str], plan: dict | None = None) -> subprocess.CompletedProcess:
    done = _finish(_start(argv, plan))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every millisecond)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _, stderr = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the moment to kill it:\n{stderr[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the moment to kill the run never came")
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines if line.strip()]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_run(run: Path, reference: Path) -> None:
    """The same per-step losses, learning rates, gradient norms and evaluation metrics, and bit-identical
    best and final weights."""
    assert _records(run) == _records(reference)
    for name in ("best", "final"):
        assert json.loads((run / name / "metrics.json").read_text()) == json.loads(
            (reference / name / "metrics.json").read_text()
        )
        got, expected = _tensors(run / name / "model.safetensors"), _tensors(reference / name / "model.safetensors")
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(got[key], value), (name, key)


@pytest.fixture(scope="module")
def reference_run(inputs, tmp_path_factory) -> Path:
    """The run never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _train(_argv(inputs, out))
    assert json.loads((out / "final" / "metrics.json").read_text())["step"] == 10
    return out


def _latest_name(run: Path) -> str | None:
    from kqa.training.checkpoints import find_latest_checkpoint

    latest = find_latest_checkpoint(run / "checkpoints")
    return latest.name if latest else None


def _resume_and_compare(inputs, run: Path, reference_run: Path) -> subprocess.CompletedProcess:
    """Resume `run` from `latest` (nothing may be unpickled) and compare it with the uninterrupted run."""
    assert not (run / "final").exists()  # the killed run did not finish
    done = _train(_argv(inputs, run, resume_from_checkpoint="latest"), {"forbid_unpickling": True})
    _assert_same_run(run, reference_run)
    return done


# ---- SIGKILL -------------------------------------------------------------------------------------------


def test_killed_during_a_step_resumes_to_the_same_run(inputs, reference_run, tmp_path):
    run = tmp_path / "run"
    proc = _start(_argv(inputs, run))

    def past_step_4():  # checkpoint-3 is written; step 4 is logged: the kill lands in step 5 or later
        return (run / "metrics.jsonl").is_file() and any(r.get("step", 0) >= 4 for r in _records_or_none(run))

    _kill_when(proc, past_step_4)
    assert _latest_name(run) in ("checkpoint-3", "checkpoint-6")
    _resume_and_compare(inputs, run, reference_run)


def _records_or_none(run: Path) -> list[dict]:
    try:
        return _records(run)
    except (OSError, json.JSONDecodeError):  # a line being written
        return []


def test_killed_during_evaluation_resumes_to_the_same_run(inputs, reference_run, tmp_path):
    run, signal_file = tmp_path / "run", tmp_path / "evaluating"
    plan = {"pause_in": "evaluation", "pause_at": 3, "signal_file": str(signal_file)}  # evaluations at 2, 4, 6
    proc = _start(_argv(inputs, run), plan)
    _kill_when(proc, signal_file.exists)
    assert _latest_name(run) == "checkpoint-3"
    assert max(r["step"] for r in _records(run)) == 6  # killed inside step 6's evaluation
    _resume_and_compare(inputs, run, reference_run)


def test_killed_while_a_checkpoint_is_written_resumes_from_the_previous_one(inputs, reference_run, tmp_path):
    run, signal_file = tmp_path / "run", tmp_path / "writing"
    plan = {"pause_in": "checkpoint_write", "pause_at": 2, "signal_file": str(signal_file)}  # checkpoints 3, 6
    proc = _start(_argv(inputs, run), plan)
    _kill_when(proc, signal_file.exists)
    half_written = run / "checkpoints" / ".tmp-checkpoint-6"
    assert sorted(p.name for p in half_written.iterdir()) == ["model.safetensors"]
    assert not (run / "checkpoints" / "checkpoint-6").exists()
    assert _latest_name(run) == "checkpoint-3"  # the half-written checkpoint is never picked
    done = _resume_and_compare(inputs, run, reference_run)
    assert "resumed from" in done.stderr and "checkpoint-3" in done.stderr
    assert "removed 1 temporary directories an interrupted run left: .tmp-checkpoint-6" in done.stderr
    assert not half_written.exists()  # step 6's checkpoint was written again, completely


# ---- a full disk -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target, at_call", [("save_checkpoint", 2), ("save_best", 2)])
def test_a_full_disk_while_saving_is_a_named_error_and_keeps_what_was_saved(inputs, tmp_path, target, at_call):
    """RLIMIT_FSIZE below the model's size from the second save on: the write fails with EFBIG, as on a
    full disk. The error names what could not be written; nothing half-written is left; the previous
    checkpoint and best/ still load."""
    from kqa.modeling import QuestionAnsweringModel

    run = tmp_path / "run"
    # Evaluations at 2 and 4, checkpoints at 3 and 6; best/ is saved at every evaluation that improves.
    plan = {"fsize_limit_in": target, "at_call": at_call, "limit": 32 * 1024}
    done = _finish(_start(_argv(inputs, run), plan))
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    if target == "save_checkpoint":
        assert "CheckpointWriteError" in last_line and "checkpoint-6" in last_line, done.stderr[-3000:]
    else:
        assert "CheckpointWriteError" in last_line and "best" in last_line, done.stderr[-3000:]
    assert "File too large" in last_line
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if "tmp" in p.name]
    assert leftovers == []
    assert _latest_name(run) == "checkpoint-3"
    QuestionAnsweringModel.from_pretrained(run / "best")  # loads
    best_step = json.loads((run / "best" / "metrics.json").read_text())["step"]
    assert best_step == (6 if target == "save_checkpoint" else 2)  # the last best/ that was written


# ---- corrupt checkpoints (copies of the reference run: checkpoints 3, 6 and 9) -----------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte: in a safetensors file tensor data, not the header (it still parses)
    path.write_bytes(bytes(data))


def _a_copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_a_checkpoint_holds_only_safetensors_and_json(reference_run):
    for checkpoint in (reference_run / "checkpoints").iterdir():
        assert {p.suffix for p in checkpoint.iterdir()} <= {".safetensors", ".json"}, sorted(checkpoint.iterdir())


def test_every_file_of_a_checkpoint_is_verified_when_latest_is_chosen(reference_run, tmp_path, caplog):
    """Whichever file of the newest checkpoint is cut short or altered, `latest` warns, names the file and
    falls back to the previous checkpoint."""
    from kqa.training.checkpoints import find_latest_checkpoint

    files = sorted(p.name for p in (reference_run / "checkpoints" / "checkpoint-9").iterdir())
    assert len(files) >= 4  # what the run really wrote: weights, optimizer, scheduler, RNG, loop state
    for name in files:
        for damage in (_truncate, _flip_a_byte):
            root = tmp_path / f"{name}-{damage.__name__}"
            shutil.copytree(reference_run / "checkpoints", root)
            damage(root / "checkpoint-9" / name)
            caplog.clear()
            with caplog.at_level("WARNING", logger="kqa"):
                assert find_latest_checkpoint(root) == root / "checkpoint-6", (name, damage.__name__)
            assert f"checkpoint-9/{name}" in caplog.text and "checkpoint-6" in caplog.text, caplog.text


def test_a_corrupt_checkpoint_named_explicitly_is_a_named_error(reference_run, inputs, tmp_path):
    from kqa.training.checkpoints import CorruptCheckpointError, verify_checkpoint
    from kqa.training.config import parse_config
    from kqa.training.recipe import QATrainingRecipe

    run = _a_copy(reference_run, tmp_path)
    checkpoint = run / "checkpoints" / "checkpoint-9"
    _truncate(checkpoint / "optimizer.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint-9/optimizer\.safetensors"):
        verify_checkpoint(checkpoint)
    config = parse_config(_argv(inputs, run, resume_from_checkpoint=str(checkpoint)))
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint-9/optimizer\.safetensors"):
        QATrainingRecipe(config).setup()


def test_latest_resumes_from_the_previous_checkpoint_when_the_newest_is_corrupt(inputs, reference_run, tmp_path):
    """A truncated file in checkpoint-9: the resumed run warns, starts again from checkpoint-6 and still
    ends as the uninterrupted run did."""
    run = _a_copy(reference_run, tmp_path)
    shutil.rmtree(run / "final")
    _truncate(run / "checkpoints" / "checkpoint-9" / "model.safetensors")
    done = _resume_and_compare(inputs, run, reference_run)
    assert "checkpoint-9/model.safetensors" in done.stderr and "falling back to" in done.stderr
    assert "at step 6" in done.stderr


def test_latest_with_no_usable_checkpoint_refuses_to_start_over(reference_run, tmp_path):
    from kqa.training.checkpoints import CorruptCheckpointError, find_latest_checkpoint

    root = tmp_path / "checkpoints"
    shutil.copytree(reference_run / "checkpoints", root)
    for step in (3, 6, 9):
        _truncate(root / f"checkpoint-{step}" / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match="no usable checkpoint") as raised:
        find_latest_checkpoint(root)
    assert all(f"checkpoint-{step}/model.safetensors" in str(raised.value) for step in (3, 6, 9))


@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_a_corrupt_best_model_is_a_named_error(reference_run, tmp_path, damage):
    from kqa.modeling import QuestionAnsweringModel

    best = tmp_path / "best"
    shutil.copytree(reference_run / "best", best)
    weights = best / "model.safetensors"
    if damage == "truncated":
        _truncate(weights)
    else:
        weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=str(weights)):
        QuestionAnsweringModel.from_pretrained(best)


# ---- Accelerate's pickle format: only with allow_pickled_checkpoint ------------------------------------------


@pytest.fixture
def fresh_accelerate_state():
    yield reset_accelerate_state
    reset_accelerate_state()


def _snapshot(recipe) -> dict:
    model = recipe.accelerator.unwrap_model(recipe.model)
    optimizer_state = recipe.optimizer.state_dict()["state"]
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "exp_avg": {k: v["exp_avg"].clone() for k, v in optimizer_state.items()},
        "lr": recipe.scheduler.get_last_lr(),
        "state": recipe.state.state_dict(),
    }


def _assert_same_snapshot(got: dict, expected: dict) -> None:
    assert got["state"] == expected["state"] and got["lr"] == expected["lr"]
    for group in ("weights", "exp_avg"):
        assert got[group].keys() == expected[group].keys()
        for key, value in expected[group].items():
            assert torch.equal(got[group][key], value), (group, key)


@pytest.mark.parametrize("written_by", ["sharded run", "kqa before safetensors checkpoints"])
def test_a_pickled_checkpoint_resumes_only_when_allowed(
    inputs, tmp_path, monkeypatch, fresh_accelerate_state, written_by
):
    """Under FSDP / DeepSpeed the checkpoint is Accelerate's save_state (pickles), as were all checkpoints of
    kqa before this format: resuming from one is refused with the flag to allow it, and works with it."""
    import kqa.training.checkpoints as checkpoints
    from kqa.training.config import parse_config
    from kqa.training.recipe import QATrainingRecipe

    run = tmp_path / "run"
    monkeypatch.setattr(checkpoints, "checkpoint_format", lambda accelerator: checkpoints.ACCELERATE_FORMAT)
    writer = QATrainingRecipe(parse_config(_argv(inputs, run, eval_strategy="no"))).setup()
    if written_by != "sharded run":
        writer.accelerator.register_for_checkpointing(writer.state)  # what kqa did then
    writer.train(max_steps_this_run=3)
    saved = _snapshot(writer)
    checkpoint = run / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "optimizer.bin").is_file()
    if written_by != "sharded run":  # the marker then held only the loop state
        (checkpoint / checkpoints.STATE_MARKER).write_text(json.dumps(writer.state.state_dict()))
    fresh_accelerate_state()
    resume = _argv(inputs, run, eval_strategy="no", resume_from_checkpoint="latest")
    with pytest.raises(checkpoints.PickledCheckpointError, match="--allow_pickled_checkpoint true"):
        QATrainingRecipe(parse_config(resume)).setup()
    fresh_accelerate_state()
    resumed = QATrainingRecipe(parse_config([*resume, "--allow_pickled_checkpoint", "true"])).setup()
    _assert_same_snapshot(_snapshot(resumed), saved)


def test_checkpoints_are_pickle_free_except_where_accelerate_shards_the_state():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from kqa.training.checkpoints import ACCELERATE_FORMAT, KQA_FORMAT, checkpoint_format

    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        assert checkpoint_format(SimpleNamespace(distributed_type=kind)) == KQA_FORMAT
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        assert checkpoint_format(SimpleNamespace(distributed_type=kind)) == ACCELERATE_FORMAT


def test_state_trees_round_trip_bit_for_bit_and_refuse_objects(tmp_path):
    import random

    from kqa.training.state_files import capture_rng_state, load_state_tree, save_state_tree

    tree = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 2, dtype=torch.float64)}},
        "param_groups": [{"betas": (0.9, 0.999), "lr": 1e-3 / 3, "params": [0], "foreach": None}],
        "python": random.getstate(),
        "tricky": {"__tensor__": "a string, not a tensor", 1.5: float("inf")},
    }
    save_state_tree(tree, tmp_path, "tree")
    loaded = load_state_tree(tmp_path, "tree")
    assert loaded["param_groups"] == tree["param_groups"] and loaded["python"] == tree["python"]
    assert loaded["tricky"] == tree["tricky"]
    for key, value in tree["state"][0].items():
        assert loaded["state"][0][key].dtype == value.dtype and torch.equal(loaded["state"][0][key], value)
    rng = capture_rng_state(torch.device("cpu"))
    save_state_tree(rng, tmp_path, "rng")
    assert load_state_tree(tmp_path, "rng")["python"] == rng["python"]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # fp16's loss scale: floats and ints
    save_state_tree(scaler.state_dict(), tmp_path, "grad_scaler")
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(load_state_tree(tmp_path, "grad_scaler"))
    assert restored.state_dict() == scaler.state_dict()
    with pytest.raises(TypeError, match="a object cannot be stored without pickle"):
        save_state_tree({"lambda": [object()]}, tmp_path, "bad")


# ---- one process fails, the power fails, a swap is cut short (no subprocess: a stand-in accelerator) ---------


class _Ranks:
    """Processes of a run played by threads: `reduce` is a real collective among them, so a rank that
    leaves the protocol early leaves the others waiting (here until the barrier's timeout)."""

    def __init__(self, size: int, timeout: float = 10.0):
        import threading

        self.size, self.values = size, [0.0] * size
        self.barrier = threading.Barrier(size, timeout=timeout)

    def accelerator(self, rank: int):
        from types import SimpleNamespace

        from accelerate.utils import DistributedType

        def reduce(tensor: torch.Tensor, reduction: str) -> torch.Tensor:
            assert reduction == "sum"
            self.values[rank] = float(tensor.item())
            self.barrier.wait()
            total = sum(self.values)
            self.barrier.wait()  # everyone has read the sum before the next collective writes
            return torch.tensor(total)

        return SimpleNamespace(
            is_main_process=rank == 0,
            process_index=rank,
            num_processes=self.size,
            device=torch.device("cpu"),
            distributed_type=DistributedType.MULTI_CPU if self.size > 1 else DistributedType.NO,
            scaler=None,
            step=0,
            reduce=reduce,
            unwrap_model=lambda model: model,
        )

    def run(self, work) -> list[BaseException | None]:
        """`work(rank)` on every rank at once; what each raised (None when it returned)."""
        import threading

        outcomes: list[BaseException | None] = [None] * self.size

        def target(rank: int) -> None:
            try:
                work(rank)
            except BaseException as err:  # noqa: BLE001 (the test inspects whatever each rank raised)
                outcomes[rank] = err

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        return outcomes


def _checkpointed(accelerator, optimizer=None):
    from types import SimpleNamespace

    from kqa.training.checkpoints import Checkpointed
    from kqa.training.state import TrainingState

    model = torch.nn.Linear(3, 2)
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = SimpleNamespace(state_dict=lambda: {"last_epoch": 1})
    return Checkpointed(accelerator, model, optimizer, scheduler, TrainingState(global_step=1))


def test_any_error_on_one_process_fails_the_checkpoint_on_every_process(tmp_path):
    """The main process cannot store the optimizer state (an object: a TypeError, not an I/O error) while
    the other writes its RNG state: neither waits for the other, both raise CheckpointWriteError (the main
    one naming the TypeError), nothing half-written is left and the previous checkpoint still verifies."""
    from types import SimpleNamespace

    from kqa.training.checkpoints import CheckpointWriteError, verify_checkpoint, write_checkpoint

    root = tmp_path / "checkpoints"
    write_checkpoint(_checkpointed(_Ranks(1).accelerator(0)), root / "checkpoint-1")
    ranks = _Ranks(2, timeout=5.0)
    unstorable = SimpleNamespace(state_dict=lambda: {"state": {0: {"momentum_buffer": object()}}})
    outcomes = ranks.run(
        lambda rank: write_checkpoint(_checkpointed(ranks.accelerator(rank), unstorable), root / "checkpoint-2")
    )
    assert all(isinstance(err, CheckpointWriteError) for err in outcomes), outcomes
    assert "checkpoint-2" in str(outcomes[0]) and "TypeError" in str(outcomes[0]), outcomes[0]
    assert "cannot be stored without pickle" in str(outcomes[0])
    assert isinstance(outcomes[0].__cause__, TypeError)
    assert "another process failed" in str(outcomes[1])
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-1"]
    verify_checkpoint(root / "checkpoint-1")


def test_any_error_while_best_is_written_fails_on_every_process(tmp_path):
    from kqa.training.checkpoints import CheckpointWriteError, replace_directory

    best = tmp_path / "best"
    best.mkdir()
    (best / "model.safetensors").write_bytes(b"the previous best")
    ranks = _Ranks(2, timeout=5.0)

    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").parent.mkdir(parents=True)
        raise RuntimeError("the tokenizer could not be saved")

    outcomes = ranks.run(lambda rank: replace_directory(ranks.accelerator(rank), best, write))
    assert all(isinstance(err, CheckpointWriteError) for err in outcomes), outcomes
    assert "RuntimeError: the tokenizer could not be saved" in str(outcomes[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (best / "model.safetensors").read_bytes() == b"the previous best"


def _record_durability(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync (of what path), rename and removal, in order."""
    import kqa.training.checkpoints as checkpoints

    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_rmtree = os.fsync, Path.rename, shutil.rmtree

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(self: Path, target) -> Path:
        events.append(("rename", f"{self} -> {target}"))
        return real_rename(self, target)

    def rmtree(path, *args, **kwargs) -> None:
        if Path(path).exists():
            events.append(("remove", str(path)))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(checkpoints.shutil, "rmtree", rmtree)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fsync'd descriptor through /proc")
def test_a_checkpoint_is_on_disk_before_older_ones_are_rotated_away(tmp_path, monkeypatch):
    """After a power loss the renamed checkpoint must not be empty while rotation already deleted the older
    ones: every file and the directory are synced, then renamed, then the parent synced, then rotated."""
    from kqa.training.checkpoints import write_checkpoint

    root = tmp_path / "checkpoints"
    accelerator = _Ranks(1).accelerator(0)
    write_checkpoint(_checkpointed(accelerator), root / "checkpoint-1")
    events = _record_durability(monkeypatch)
    write_checkpoint(_checkpointed(accelerator), root / "checkpoint-2", keep=1)
    tmp, final = root / ".tmp-checkpoint-2", root / "checkpoint-2"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2"]
    rename = events.index(("rename", f"{tmp} -> {final}"))
    removal = events.index(("remove", str(root / "checkpoint-1")))
    synced_before = {Path(path) for kind, path in events[:rename] if kind == "fsync"}
    assert {tmp / p.name for p in final.iterdir()} | {tmp} <= synced_before, events
    synced_after = [Path(path) for kind, path in events[rename:removal] if kind == "fsync"]
    assert synced_after == [root], events  # the rename itself is durable before anything is deleted


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fsync'd descriptor through /proc")
def test_best_is_on_disk_before_it_is_swapped_in(tmp_path, monkeypatch):
    from kqa.training.checkpoints import replace_directory

    best = tmp_path / "best"
    best.mkdir()
    (best / "old.txt").write_text("old")
    events = _record_durability(monkeypatch)

    def write(tmp: Path) -> None:
        (tmp / "predictions").mkdir(parents=True)
        (tmp / "predictions" / "ko.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"new")

    replace_directory(_Ranks(1).accelerator(0), best, write)
    tmp, old = tmp_path / ".best.tmp", tmp_path / ".best.old"
    swap = events.index(("rename", f"{tmp} -> {best}"))
    synced_before = {Path(path) for kind, path in events[:swap] if kind == "fsync"}
    assert {tmp / "model.safetensors", tmp / "predictions" / "ko.json", tmp / "predictions", tmp} <= synced_before
    assert [Path(path) for kind, path in events[swap:] if kind == "fsync"] == [tmp_path], events
    assert events[-1] == ("remove", str(old))  # the previous best/ goes only once the new one is durable


def test_setup_restores_best_from_an_interrupted_swap_and_removes_stale_temporaries(tmp_path, caplog):
    """Killed between `best → .best.old` and `.best.tmp → best`: only `.best.old` holds the best model. The
    next run puts it back (and final/ likewise) and removes what killed writes left behind."""
    from kqa.training.checkpoints import recover_interrupted_writes

    run = tmp_path / "run"
    old_best, old_final = run / ".best.old", run / ".final.old"
    for directory in (old_best, old_final, run / ".best.tmp", run / "checkpoints" / ".tmp-checkpoint-6"):
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(directory.name.encode())
    (run / "final").mkdir()  # final/ was swapped in, the old one not yet removed: that one is stale
    (run / "checkpoints" / "checkpoint-3").mkdir()
    with caplog.at_level("INFO", logger="kqa"):
        recover_interrupted_writes(run / "checkpoints", [run / "best", run / "final"])
    assert (run / "best" / "model.safetensors").read_bytes() == b".best.old"
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoints", "final"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-3"]
    assert f"restored {run / 'best'} from {old_best}" in caplog.text, caplog.text
    assert "removed 3 " in caplog.text, caplog.text
