"""Benchmark training throughput: the kqa loop (`kqa.training.recipe.QATrainingRecipe`) against `transformers.Trainer`
with the common recipe (every example padded to 512 tokens, no stride), with dynamic padding on kqa's own
features, and with dynamic padding plus length-grouped batches.

The runs share one process, one backbone config and the same initial weights (saved once and loaded by
every run; checked tensor by tensor), the same training examples, the same batch size, optimizer-step
count, learning-rate schedule and precision. Only the optimisation steps are timed: setup (tokenizer,
features, model, optimizer) is excluded, and throughput is taken over steps 2..N-1 (the first step warms
up allocators and kernels; after the last, each loop does its end-of-training work). Tokens are counted
from the batches the model actually receives (a forward pre-hook): non-padding tokens (attention_mask)
and padded tokens (the tensor size, i.e. the compute spent).

Two kinds of model:
- by default a random-init BERT of the requested shape, with a WordPiece tokenizer trained on every
  `*train*.json` of the data directory (runs: common recipe, dynamic padding, kqa);
- `--model DIR|HUB_NAME`: a pretrained encoder and its tokenizer, loaded once with
  `QuestionAnsweringModel.from_backbone` (a seeded span head) and saved in the transformers layout. With
  `--config` the training files and window geometry (and, unless given as flags, batch size, learning
  rate, weight decay, warmup and seed) come from that kqa training config, so the benchmark trains on
  exactly the main job's data (precision is --bf16 or fp32, as the offline config; runs: all four;
  `--recipes` picks some). Trainer trains the backbone's own
  config (attention dropout 0.1 for BERT); kqa trains what a user gets from TrainConfig's defaults
  (`attention_dropout: auto`: 0 on CPU; `group_by_length: true`); the table shows each run's attention
  dropout and sampler, read from the run itself.

    python benchmarks/bench_training.py --out results.json                    # CPU default, a few minutes
    python benchmarks/bench_training.py --bert-base --bf16 --max-seq-length 384 --peak-tflops 989 --steps 100 \\
        --batch-size 32 --out results.json                                     # a GPU (H100 dense bf16 peak)
    python benchmarks/bench_training.py --model models/e5-small --config configs/offline-e5-small.yaml \\
        --recipes dynamic,grouped,kqa --steps 34 --out results.json            # the main job's backbone and data

On the main job's data (2,057 windows of batch 16) Trainer's LengthGroupedSampler sorts megabatches of 32
batches, longest first: 34 steps time steps 2..33, about one whole megabatch, so the grouped run's timed
windows are as long as the data's on average (a shorter run times mostly long ones; the script notes it).
kqa's sampler sorts megabatches of 50 batches, so its timed steps are the longer two thirds of its first
megabatch: its windows are longer than the data's mean, which can only lower its samples/s (the table
shows tokens per sample for each run).
Run it on an otherwise idle machine: a concurrent CPU job slows the runs unevenly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

BERT_BASE = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}  # klue/bert-base's shape

RECIPES = {  # --recipes key -> the row's name
    "common": "transformers.Trainer, common recipe",
    "dynamic": "transformers.Trainer, dynamic padding",
    "grouped": "transformers.Trainer, dynamic padding + group_by_length",
    "kqa": "kqa.training.recipe.QATrainingRecipe",
}
RANDOM_MODEL_RECIPES = ("common", "dynamic", "kqa")  # the runs of the docs/benchmarks.md table
PRETRAINED_RECIPES = tuple(RECIPES)
# The Trainer rows kqa's samples/s is compared with (the headline; target: kqa >= TARGET_RATIO x each).
RATIO_REFERENCES = {"dynamic": "Trainer dyn", "grouped": "Trainer grouped"}
TARGET_RATIO = 1.5

# Settings every run shares: a flag wins, then --config (the main job's value), then these defaults.
DEFAULTS = {
    "batch_size": 8,
    "learning_rate": 3e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "seed": 42,
    "max_seq_length": 384,
    "doc_stride": 128,
    "max_query_length": 64,
}
CONFIG_FIELDS = {
    "batch_size": "per_device_train_batch_size",
    "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "warmup_ratio": "warmup_ratio",
    "seed": "seed",
    "max_seq_length": "features.max_seq_length",
    "doc_stride": "features.doc_stride",
    "max_query_length": "features.max_query_length",
}


class BatchRecorder:
    """A forward pre-hook that records, for every training forward pass, its start time and the
    padded and non-padding token counts of its batch."""

    def __init__(self, module):
        import torch

        self.times: list[float] = []
        self.padded: list[int] = []
        self.non_pad: list[int] = []
        self._cuda = torch.cuda.is_available()
        # A compiled model traces its hooks: this one reads the clock and syncs, so it stays out of the graph
        # (one graph break before the forward, which then compiles whole).
        self._handle = module.register_forward_pre_hook(torch.compiler.disable(self._hook), with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not module.training:
            return None
        if self._cuda:  # timestamps must not run ahead of the device
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.padded.append(int(input_ids.numel()))
        self.non_pad.append(int(mask.sum()) if mask is not None else int(input_ids.numel()))
        return None

    def remove(self) -> None:
        self._handle.remove()


@dataclass
class Run:
    """One timed training run: its batches, its train() time and what it trained."""

    recorder: BatchRecorder
    train_s: float
    attention_dropout: float | None  # read from the model the run trained
    sampler: str  # the class that ordered its training batches
    optim: str | None = None
    peak_memory_mib: float | None = None  # the device's peak allocated memory during train() (CUDA only)
    compiled: bool = False  # the model ran through torch.compile


def non_embedding_parameters(model) -> int:
    """Parameters outside the embedding tables: the N of the 6·N·tokens training-FLOPs estimate."""
    return sum(p.numel() for name, p in model.named_parameters() if ".embeddings." not in f".{name}")


def summarise(
    name: str,
    features: str,
    padding: str,
    run: Run,
    batch_size: int,
    steps: int,
    n_params: int,
    peak_tflops: float | None,
    warmup_steps: int = 1,
) -> dict:
    recorder = run.recorder
    if len(recorder.times) != steps:
        raise RuntimeError(f"{name}: expected {steps} training forward passes, saw {len(recorder.times)}")
    # Steady state: steps W+1..N-1, from the start of step W+1 to the start of step N. The first W steps
    # warm up allocators and kernels (and compile, with --compile); after the last one each loop does its
    # end-of-training work.
    steady_steps = steps - 1 - warmup_steps
    steady_s = recorder.times[-1] - recorder.times[warmup_steps]
    padded = sum(recorder.padded[warmup_steps:-1])
    non_pad = sum(recorder.non_pad[warmup_steps:-1])
    flops = 6.0 * n_params * padded
    row = {
        "recipe": name,
        "features": features,
        "padding": padding,
        "sampler": run.sampler,
        "attention_dropout": run.attention_dropout,
        "train_s": run.train_s,
        "steady_s": steady_s,
        "s_per_step": steady_s / steady_steps,
        "samples_per_s": steady_steps * batch_size / steady_s,
        "tokens_per_sample": non_pad / (steady_steps * batch_size),
        "non_pad_tokens_per_s": non_pad / steady_s,
        "padded_tokens_per_s": padded / steady_s,
        "pad_fraction": 1.0 - non_pad / padded if padded else 0.0,
        "tokens_non_pad_total": sum(recorder.non_pad),
        "tokens_padded_total": sum(recorder.padded),
        "model_tflops_per_s": flops / steady_s / 1e12,
        "peak_memory_mib": run.peak_memory_mib,
        "compiled": run.compiled,
    }
    row["mfu"] = row["model_tflops_per_s"] / peak_tflops if peak_tflops else None
    return row


def add_ratios(rows: list[dict], keys: list[str]) -> dict:
    """Step speed-up against the first row, and samples/s against each Trainer row of RATIO_REFERENCES
    that ran; returns the headline (kqa's samples/s against those rows)."""
    by_key = dict(zip(keys, rows))
    for row in rows:
        row["speedup"] = rows[0]["s_per_step"] / row["s_per_step"]
        row["non_pad_speedup"] = row["non_pad_tokens_per_s"] / rows[0]["non_pad_tokens_per_s"]
        for ref in RATIO_REFERENCES:
            if ref in by_key:
                row[f"samples_per_s_vs_{ref}"] = row["samples_per_s"] / by_key[ref]["samples_per_s"]
    if "kqa" not in by_key:
        return {}
    ratios = {
        f"kqa_samples_per_s_vs_{ref}": by_key["kqa"][f"samples_per_s_vs_{ref}"]
        for ref in RATIO_REFERENCES
        if ref in by_key
    }
    # The same comparison per non-padding token: it does not depend on which windows the timed steps drew
    # (a length-grouped order draws its longest windows first; see print_report).
    tokens = {
        f"kqa_non_pad_tokens_per_s_vs_{ref}": by_key["kqa"]["non_pad_tokens_per_s"]
        / by_key[ref]["non_pad_tokens_per_s"]
        for ref in RATIO_REFERENCES
        if ref in by_key
    }
    return {**ratios, **tokens, "target": TARGET_RATIO, "target_met": all(r >= TARGET_RATIO for r in ratios.values())}


# --------------------------------------------------------------------------------------------------
# Settings: flags, the main job's config, defaults
# --------------------------------------------------------------------------------------------------


def load_main_config(path: Path, data_dir: Path | None):
    """The kqa TrainConfig of `path`, read as train.py reads it (`--data-dir` overrides its data_dir)."""
    from kqa.training.config import parse_config

    return parse_config(["--config", str(path)] + (["--data_dir", str(data_dir)] if data_dir else []))


def config_value(config, dotted: str):
    owner, _, name = dotted.rpartition(".")
    return getattr(getattr(config, owner) if owner else config, name)


def resolve_settings(args, parser: argparse.ArgumentParser):
    """Fill the shared settings that no flag gave from --config, else DEFAULTS; pick the model and the
    recipes. Returns the main job's TrainConfig (None without --config)."""
    main_config = load_main_config(args.config, args.data_dir) if args.config else None
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default if main_config is None else config_value(main_config, CONFIG_FIELDS[name]))
    if main_config is not None:
        args.model = args.model or main_config.model_name_or_path
        if args.max_train_examples is None:
            args.max_train_examples = main_config.max_train_samples
    if args.model and args.bert_base:
        parser.error("--bert-base is the random model's shape; --model loads a pretrained one")
    default = PRETRAINED_RECIPES if args.model else RANDOM_MODEL_RECIPES
    args.recipes = [r.strip() for r in args.recipes.split(",")] if args.recipes else list(default)
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown or not args.recipes or len(set(args.recipes)) != len(args.recipes):
        parser.error(f"--recipes: a comma-separated list of distinct names out of {', '.join(RECIPES)}")
    args.recipes = [r for r in RECIPES if r in args.recipes]  # the table's order
    return main_config


def training_files(args, main_config) -> list[Path]:
    """The main job's train_files with --config, else every *train*.json of the data directory."""
    if main_config is None:
        return common.squad_files(args.data_dir or common.default_data_dir(), split="train")
    if not main_config.train_files:
        raise SystemExit(f"{args.config}: no train_files; the benchmark trains on local SQuAD-format files")
    files = [main_config.resolve_data_path(f) for f in main_config.train_files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(
            f"{args.config}: train files not found: {', '.join(missing)} (run from the repository "
            f"root, as train.py, or pass --data-dir)"
        )
    return files


# --------------------------------------------------------------------------------------------------
# The shared initial model
# --------------------------------------------------------------------------------------------------


def build_initial_model(args, train_examples, work: Path) -> tuple[Path, object, int]:
    """A WordPiece tokenizer trained on the examples, a random-init BERT of the requested shape and its
    span head, saved once (kqa save_pretrained, transformers layout) for every run to load."""
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    model_dir = work / "initial-model"
    tokenizer = build_wordpiece_tokenizer(common.corpus_texts(train_examples), vocab_size=args.vocab_size)
    shape = dict(BERT_BASE) if args.bert_base else common.bert_shape(args)
    # The trained vocabulary can be smaller than asked for on a small corpus; the table never is.
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    config = tiny_bert_config(
        max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **shape
    )
    torch.manual_seed(args.seed)
    model = QuestionAnsweringModel.from_config(config)
    model.save_pretrained(model_dir, tokenizer=tokenizer, kqa_config={"max_seq_length": args.max_seq_length})
    return model_dir, tokenizer, non_embedding_parameters(model)


def build_pretrained_initial_model(args, work: Path) -> tuple[Path, object, int, float | None]:
    """The pretrained encoder of --model with a seeded span head, saved once (transformers layout) for
    every run to load. Returns (directory, tokenizer, non-embedding parameters, its attention dropout)."""
    import torch
    from transformers import AutoTokenizer

    from kqa.modeling import QuestionAnsweringModel, attention_dropout_of

    model_dir = work / "initial-model"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    torch.manual_seed(args.seed)  # the head is freshly initialised
    # The backbone's own config (no attention_dropout): Trainer must train the model as transformers
    # loads it; kqa applies its own attention_dropout setting when it loads this directory.
    model = QuestionAnsweringModel.from_backbone(args.model)
    model.save_pretrained(model_dir, tokenizer=tokenizer, kqa_config={"max_seq_length": args.max_seq_length})
    return model_dir, tokenizer, non_embedding_parameters(model), attention_dropout_of(model.config)


# --------------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------------


def setup_kqa(args, model_dir: Path, train_files: list[Path], work: Path):
    """kqa as a user gets it from TrainConfig's defaults; only what every run shares is set (not
    group_by_length nor attention_dropout: their defaults apply)."""
    from kqa.training.config import TrainConfig
    from kqa.training.recipe import QATrainingRecipe

    config = TrainConfig.from_flat(
        model_name_or_path=str(model_dir),
        dataset_name=None,
        train_files=[str(f) for f in train_files],
        max_train_samples=args.max_train_examples,
        max_seq_length=args.max_seq_length,
        doc_stride=args.doc_stride,
        max_query_length=args.max_query_length,
        per_device_train_batch_size=args.batch_size,
        max_train_steps=args.steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        mixed_precision="bf16" if args.bf16 else "no",
        compile=args.compile,
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=args.steps,
        report_to="none",
        disable_tqdm=True,
        output_dir=str(work / "kqa-run"),
    )
    with default_compile_backend(args.compile and args.compile_backend):  # setup() compiles
        recipe = QATrainingRecipe(config).setup()
    model = recipe.accelerator.unwrap_model(recipe.model)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return recipe, initial


def prepared_sampler(dataloader):
    """The sampler that orders a DataLoader's examples; Accelerate's prepared loader keeps it inside
    its batch sampler (wrapped once more when it shards batches across processes)."""
    batch_sampler = dataloader.batch_sampler
    while not hasattr(batch_sampler, "sampler") and hasattr(batch_sampler, "batch_sampler"):
        batch_sampler = batch_sampler.batch_sampler
    return getattr(batch_sampler, "sampler", None)


def train_kqa(recipe) -> Run:
    from kqa.modeling import attention_dropout_of

    model = recipe.accelerator.unwrap_model(recipe.model)
    sampler = type(prepared_sampler(recipe.train_dataloader)).__name__
    recorder = BatchRecorder(model)
    reset_peak_memory()
    t0 = time.perf_counter()
    recipe.train()
    synchronize()
    end = time.perf_counter()
    recorder.remove()
    compiled = getattr(recipe.model, "_compiled_call_impl", None) is not None
    return Run(recorder, end - t0, attention_dropout_of(model.config), sampler, None, peak_memory_mib(), compiled)


def group_by_length_arguments(training_arguments_class) -> dict:
    """TrainingArguments keywords for length-grouped batches: transformers 5 replaced
    `group_by_length=True` with `train_sampling_strategy="group_by_length"`."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_arguments_class)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def trainer_sampler(trainer, grouped: bool) -> str:
    """The sampler Trainer will order its training batches with, asked the way train() asks (a private
    hook), so that grouping which silently does not happen fails here. Without a `length` column (and
    Trainer drops one anyway: remove_unused_columns runs before the sampler reads it) LengthGroupedSampler
    takes len(input_ids) of every window: kqa's windows are stored unpadded, so those are true lengths."""
    sampler = trainer._get_train_sampler()
    name = type(sampler).__name__
    if grouped != (name == "LengthGroupedSampler"):
        raise RuntimeError(f"Trainer samples with {name}; expected {'a' if grouped else 'no'} LengthGroupedSampler")
    return name


def run_trainer(
    args, model_dir: Path, dataset, collator, initial: dict, work: Path, name: str, grouped: bool = False
) -> Run:
    import torch
    from transformers import AutoModelForQuestionAnswering, PrinterCallback, Trainer, TrainingArguments

    from kqa.modeling import attention_dropout_of

    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir))
    common.assert_same_weights(initial, model, name)
    training_args = TrainingArguments(
        output_dir=str(work / re.sub(r"[^A-Za-z0-9_.]+", "-", name)),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=math.ceil(args.warmup_ratio * args.steps),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=args.seed,
        bf16=args.bf16,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        torch_compile=args.compile,
        torch_compile_backend=args.compile_backend if args.compile else None,
        **(group_by_length_arguments(TrainingArguments) if grouped else {}),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # no metrics print-out in the middle of the table
    sampler = trainer_sampler(trainer, grouped)
    recorder = BatchRecorder(model)
    reset_peak_memory()
    t0 = time.perf_counter()
    trainer.train()
    synchronize()
    end = time.perf_counter()
    recorder.remove()
    return Run(
        recorder,
        end - t0,
        attention_dropout_of(model.config),
        sampler,
        str(getattr(training_args.optim, "value", training_args.optim)),
        peak_memory_mib(),
        type(trainer.model_wrapped).__name__ == "OptimizedModule",  # what accelerate's dynamo plugin returns
    )


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


@contextlib.contextmanager
def default_compile_backend(backend: str | bool):
    """kqa's `compile: true` calls nn.Module.compile() with torch's default backend (inductor); a smoke run on
    the CPU asks for a cheaper one (--compile-backend aot_eager: the same graph capture without inductor's
    C++ code generation, which takes minutes there). A no-op for inductor or without --compile."""
    import torch

    if not backend or backend == "inductor":
        yield
        return
    original = torch.nn.Module.compile

    def compile_with_backend(self, *args, **kwargs):
        kwargs.setdefault("backend", backend)
        return original(self, *args, **kwargs)

    torch.nn.Module.compile = compile_with_backend
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="a pretrained encoder (directory with its tokenizer, or a hub name) instead of a random "
        "BERT; default with --config: its model_name_or_path",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a kqa training config (e.g. configs/offline-e5-small.yaml): its train_files, window "
        "geometry, batch size, learning rate, weight decay, warmup and seed (flags override)",
    )
    parser.add_argument(
        "--recipes",
        default=None,
        help=f"comma-separated runs out of {','.join(RECIPES)}; default "
        f"{','.join(RANDOM_MODEL_RECIPES)} (random model), all with --model "
        f"(the common recipe pads every example to 512 tokens: slow)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of SQuAD-format JSON files; every *train*.json is used; default $KQA_DATA_DIR "
        "or ../shared/data. With --config: overrides its data_dir",
    )
    parser.add_argument("--max-train-examples", type=int, default=None, help="first N training examples only")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {DEFAULTS['batch_size']}")
    parser.add_argument("--learning-rate", type=float, default=None, help=f"default {DEFAULTS['learning_rate']}")
    parser.add_argument("--weight-decay", type=float, default=None, help=f"default {DEFAULTS['weight_decay']}")
    parser.add_argument("--warmup-ratio", type=float, default=None, help=f"default {DEFAULTS['warmup_ratio']}")
    parser.add_argument(
        "--max-seq-length", type=int, default=None, help=f"kqa's window length; default {DEFAULTS['max_seq_length']}"
    )
    parser.add_argument("--doc-stride", type=int, default=None, help=f"default {DEFAULTS['doc_stride']}")
    parser.add_argument("--max-query-length", type=int, default=None, help=f"default {DEFAULTS['max_query_length']}")
    parser.add_argument("--reference-max-length", type=int, default=512, help="the common recipe's padded length")
    common.add_bert_shape_arguments(parser, what="random model")
    parser.add_argument(
        "--bert-base",
        action="store_true",
        help="klue/bert-base's shape (vocab 32000, hidden 768, 12 layers, 12 heads); random weights",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision in every run (a GPU)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every run: kqa's `compile: true`, Trainer's torch_compile (raise --warmup-steps)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend with --compile (aot_eager: graph capture only, for a CPU smoke run)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=1,
        help="untimed first steps of every run (warm-up; with --compile, the compilations)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak dense TFLOP/s at the training precision, for MFU",
    )
    parser.add_argument("--seed", type=int, default=None, help=f"default {DEFAULTS['seed']}")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser


def quiet_libraries() -> None:
    import datasets
    import transformers

    os.environ.setdefault("WANDB_MODE", "disabled")
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kqa").setLevel(logging.WARNING)


def train_all(args, train_files: list[Path], work: Path) -> dict:
    """Build the shared model and data, run the chosen recipes; returns the rows and what they ran on."""
    from transformers import DataCollatorWithPadding, default_data_collator

    from kqa.dataloaders import feature_lengths

    t0 = time.perf_counter()
    examples, per_file = common.load_examples(train_files, args.max_train_examples)
    backbone_dropout = None
    if args.model:
        model_dir, tokenizer, n_params, backbone_dropout = build_pretrained_initial_model(args, work)
    else:
        model_dir, tokenizer, n_params = build_initial_model(args, examples, work)
    reference_features, reference_lost = None, None
    if "common" in args.recipes:
        reference_features, reference_lost = common.seed_recipe_features(
            examples, tokenizer, args.reference_max_length, with_labels=True
        )
    setup_s = time.perf_counter() - t0

    # kqa's setup first (its features feed the Trainer runs and its weights are the reference); it trains last.
    recipe, initial = setup_kqa(args, model_dir, train_files, work)
    logging.getLogger("kqa").setLevel(logging.WARNING)  # the recipe's setup configures logging
    kqa_features = recipe.train_features
    window_lengths = feature_lengths(kqa_features)
    kqa_windows = f"kqa ({len(kqa_features)} windows)"
    pad_multiple = 8 if args.bf16 else None
    trainer_runs = {
        "common": (
            f"seed recipe ({len(reference_features or [])} rows)",
            f"max_length {args.reference_max_length}",
            reference_features,
            default_data_collator,
        ),
        "dynamic": (
            kqa_windows,
            "DataCollatorWithPadding",
            kqa_features,
            DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple),
        ),
        "grouped": (
            kqa_windows,
            "DataCollatorWithPadding",
            kqa_features,
            DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple),
        ),
    }
    rows, optim = [], None
    for key in args.recipes:
        if key == "kqa":
            continue
        features, padding, dataset, collator = trainer_runs[key]
        run = run_trainer(args, model_dir, dataset, collator, initial, work, RECIPES[key], grouped=key == "grouped")
        optim = run.optim
        rows.append(
            summarise(
                RECIPES[key],
                features,
                padding,
                run,
                args.batch_size,
                args.steps,
                n_params,
                args.peak_tflops,
                args.warmup_steps,
            )
        )
    if "kqa" in args.recipes:
        rows.append(
            summarise(
                RECIPES["kqa"],
                kqa_windows,
                "QACollator (longest in batch)",
                train_kqa(recipe),
                args.batch_size,
                args.steps,
                n_params,
                args.peak_tflops,
                args.warmup_steps,
            )
        )
    return {
        "rows": rows,
        "examples": len(examples),
        "per_file": per_file,
        "n_params": n_params,
        "tokenizer_size": len(tokenizer),
        "kqa_features": len(kqa_features),
        "backbone_dropout": backbone_dropout,
        "mean_window_tokens": sum(window_lengths) / len(window_lengths),
        "reference_features": None if reference_features is None else len(reference_features),
        "reference_lost": reference_lost,
        "optim": optim,
        "setup_s": setup_s,
    }


def with_cache_dir(directory: Path, fn):
    """Run `fn` with KQA_CACHE_DIR at `directory` (kqa caches features there), restoring it after."""
    previous = os.environ.get("KQA_CACHE_DIR")
    os.environ["KQA_CACHE_DIR"] = str(directory)
    try:
        return fn()
    finally:
        if previous is None:
            os.environ.pop("KQA_CACHE_DIR", None)
        else:
            os.environ["KQA_CACHE_DIR"] = previous


def print_report(args, result: dict, headline: dict, main_config) -> None:
    rows = {row["recipe"]: row for row in result["rows"]}
    source = f"the train_files of {args.config}" if main_config is not None else "every *train*.json"
    print(
        f"data: {source}: {result['examples']} examples -> {result['kqa_features']} windows (kqa: max_seq_length "
        f"{args.max_seq_length}, stride {args.doc_stride}, max_query_length {args.max_query_length}; mean window "
        f"{result['mean_window_tokens']:.0f} tokens; setup {result['setup_s']:.1f} s, not timed)"
    )
    if result["reference_features"] is not None:
        print(
            f"common recipe: one {args.reference_max_length}-token row per example, "
            f"{result['reference_lost']} answers lost to truncation"
        )
    if args.model:
        what = (
            f"{args.model} (pretrained encoder, attention dropout {result['backbone_dropout']}, and a span head "
            f"seeded with {args.seed})"
        )
    else:
        what = "random-init BERT"
    print(
        f"model: {what}, {result['n_params'] / 1e6:.1f}M non-embedding parameters; identical initial weights "
        f"checked; {args.steps} optimizer steps of batch {args.batch_size}, learning rate {args.learning_rate}, "
        f"weight decay {args.weight_decay}, warmup {args.warmup_ratio}; throughput over steps 2..{args.steps - 1}"
    )
    grouped, dynamic = rows.get(RECIPES["grouped"]), rows.get(RECIPES["dynamic"])
    if grouped is not None:
        versus = f" vs {dynamic['pad_fraction']:.1%} with random batches" if dynamic else ""
        print(
            f"group_by_length: Trainer orders its batches with {grouped['sampler']} (lengths = len(input_ids) of "
            f"each unpadded kqa window); pad share {grouped['pad_fraction']:.1%}{versus}"
        )
    columns = [
        ("recipe", "recipe", ""),
        ("padding", "padding", ""),
        ("sampler", "sampler", ""),
        ("attention_dropout", "attn dropout", ".2f"),
        ("train_s", "train() s", ".2f"),
        ("s_per_step", "s/step", ".3f"),
        ("samples_per_s", "samples/s", ".2f"),
        ("tokens_per_sample", "tok/sample", ".0f"),
        ("non_pad_tokens_per_s", "non-pad tok/s", ",.0f"),
        ("padded_tokens_per_s", "padded tok/s", ",.0f"),
        ("pad_fraction", "pad share", ".1%"),
        ("speedup", "step speed-up", ".2f"),
    ]
    columns += [
        (f"samples_per_s_vs_{ref}", f"samples/s vs {label}", ".2f")
        for ref, label in RATIO_REFERENCES.items()
        if RECIPES[ref] in rows
    ]
    columns.append(("model_tflops_per_s", "model TFLOP/s", ".3f"))
    if args.peak_tflops:
        columns.append(("mfu", "MFU", ".1%"))
    common.print_table(result["rows"], columns)
    print(
        "model TFLOP/s = 6 x non-embedding parameters x padded tokens / s (attention's own FLOPs not counted); "
        "tok/sample = non-pad tokens per timed sample"
    )
    warn_unrepresentative(result["rows"], result["mean_window_tokens"])
    ratios = [
        f"{value:.2f}x {RECIPES[key.rsplit('_vs_', 1)[1]]}"
        for key, value in headline.items()
        if key.startswith("kqa_samples_per_s_vs_")
    ]
    tokens = [f"{value:.2f}x" for key, value in headline.items() if key.startswith("kqa_non_pad_tokens_per_s_vs_")]
    if ratios:
        print(
            f"kqa samples/s: {', '.join(ratios)} (target >= {TARGET_RATIO}x: "
            f"{'met' if headline['target_met'] else 'not met'}); per non-pad token: {', '.join(tokens)}"
        )


def warn_unrepresentative(rows: list[dict], mean_window_tokens: float, tolerance: float = 0.05) -> None:
    """Flag a run on kqa's windows whose timed steps drew windows much longer or shorter than the data's
    mean: its samples/s is not what a whole epoch gives. Trainer's LengthGroupedSampler sorts megabatches
    of up to 50 batches longest first, so a run shorter than one megabatch times mostly long windows."""
    for row in rows:
        drift = row["tokens_per_sample"] / mean_window_tokens - 1.0
        if row["features"].startswith("kqa (") and abs(drift) > tolerance:
            print(
                f"note: {row['recipe']}: its timed samples average {row['tokens_per_sample']:.0f} tokens, "
                f"{drift:+.0%} against the data's mean window; its samples/s is not an epoch's (compare non-pad "
                f"tok/s, or raise --steps to cover whole megabatches)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warmup_steps < 1 or args.steps < args.warmup_steps + 2:
        parser.error("--steps must be at least --warmup-steps + 2 (>= 1): throughput is measured over steps W+1..N-1")
    main_config = resolve_settings(args, parser)
    train_files = training_files(args, main_config)

    import torch

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="kqa-bench-training-") as tmp:
        work = Path(tmp)
        result = with_cache_dir(work / "cache", lambda: train_all(args, train_files, work))
    headline = add_ratios(result["rows"], args.recipes)

    machine = common.machine_info()
    settings = common.settings_from_args(args)
    if args.model:  # the random model's shape flags do not apply
        for name in ("vocab_size", "hidden_size", "layers", "heads", "intermediate_size", "bert_base"):
            settings.pop(name)
    settings.update(
        {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "train_files": [str(f) for f in train_files],
            "train_examples": result["examples"],
            "files": result["per_file"],
            "non_embedding_parameters": result["n_params"],
            "vocab_size_trained": result["tokenizer_size"],
            "backbone_attention_dropout": result["backbone_dropout"],
            "kqa_features": result["kqa_features"],
            "reference_features": result["reference_features"],
            "reference_lost_answers": result["reference_lost"],
            "trainer_optim": str(result["optim"]),
        }
    )
    common.print_header(machine, {k: v for k, v in settings.items() if k not in ("files", "train_files")})
    print_report(args, result, headline, main_config)
    common.write_json(args.out, machine=machine, settings=settings, results=result["rows"], headline=headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
