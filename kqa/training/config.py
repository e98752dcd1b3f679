"""Training configuration: one dataclass, filled from a YAML file and command-line flags.

`TrainConfig` composes the stage configs it shares with prediction: `features` (`FeatureConfig`) and
`postprocess` (`PostprocessConfig`), whose defaults live only in those dataclasses. Their fields are
flat in YAML and on the command line (`--max_seq_length 512`, `n_best_size: 5`).

Precedence: dataclass defaults < YAML file (`--config`) < command-line flags. The resolved config is
saved next to the checkpoints (`output_dir/train_config.yaml`) so every run can be reproduced.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from kqa.columns import check_mapping_fields, parse_column_mapping
from kqa.features import FeatureConfig
from kqa.flags import parse_bool, parse_column_mapping_flag
from kqa.negatives import NegativeSettings
from kqa.postprocess import PostprocessConfig
from kqa.prediction import EVAL_BATCH_SIZE, SETTING_SECTIONS, PredictionSettings
from kqa.text import read_utf8_text

# What `mixed_precision` accepts besides unset (Accelerate's own setting); `auto` is resolved here.
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
# When a run pushes to the Hub (named after transformers' `hub_strategy`): at its end, or also at each new best/.
HUB_STRATEGIES = ("end", "best")
# Settings never written to disk (train_config.yaml) nor handed to trackers: the access tokens.
SECRET_FIELDS = ("model_token", "hub_token")


@dataclass
class TrainConfig:
    # --- model -----------------------------------------------------------------------------------
    model_name_or_path: str = "klue/bert-base"
    """Hub id or local directory of the encoder, or of a question-answering model to continue training (a
    kqa model or a transformers `*ForQuestionAnswering` checkpoint)."""
    model_revision: Optional[str] = None
    """Hub id: the branch, tag or commit of model_name_or_path (default: main)."""
    model_token: Optional[str] = field(default=None, repr=False)
    """Hub id: an access token (default: huggingface_hub's own, HF_TOKEN or `hf auth login`). Never written
    to train_config.yaml nor sent to trackers (`SECRET_FIELDS`)."""
    model_cache_dir: Optional[str] = None
    """Hub id: the hub cache to use (default: huggingface_hub's, HF_HUB_CACHE)."""
    model_local_files_only: bool = False
    """Hub id: look in the hub cache only (as HF_HUB_OFFLINE=1)."""
    allow_bin_weights: bool = False
    """Continue from a question-answering model whose only weights are pickle-based pytorch_model.bin
    (torch.load with weights_only=True; only for files you trust)."""
    tokenizer_name_or_path: Optional[str] = None
    """Defaults to model_name_or_path."""
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    compile: bool = False
    """torch.compile the model (inductor) after `accelerator.prepare`, in place: the first steps and each
    new window length compile (minutes on a GPU for BERT-base), later steps run fused kernels. Checkpoints
    and best/ / final/ hold the same weights and keys as an eager run's."""
    attention_dropout: str = "auto"
    """Dropout on attention probabilities while training. auto: 0 on CPU, where torch's fused attention
    kernel has no dropout and the unfused path makes a training step up to ~4x slower
    (benchmarks/bench_attention.py), the encoder config's own value elsewhere. model: always the config's
    value. A number in [0, 1): that value everywhere."""

    # --- data ------------------------------------------------------------------------------------
    dataset_name: Optional[str] = "KorQuAD/squad_kor_v1"
    """Hugging Face dataset name; used when train_files / validation_files are not given."""
    dataset_config_name: Optional[str] = None
    """The dataset's config, e.g. `mrc` of `klue` (KLUE-MRC)."""
    dataset_revision: Optional[str] = None
    """A branch, tag or commit of the hub dataset (default: its main branch)."""
    train_split: str = "train"
    validation_split: str = "validation"
    data_dir: Optional[str] = None
    """Relative data file paths are resolved against this (default: $KQA_DATA_DIR when set)."""
    train_files: list[str] = field(default_factory=list)
    """Data files (SQuAD-layout JSON, or flat rows in .json, .jsonl, .csv, .parquet: docs/data.md); several
    are concatenated (their schema columns: columns carried along are kept only for evaluation)."""
    validation_files: list[str] = field(default_factory=list)
    """Data files as for train_files, each evaluated and reported separately; `name=path` names a set."""
    column_mapping: dict[str, str] = field(default_factory=dict)
    """Which column holds which field in flat data files and datasets whose columns fit no known schema:
    a YAML mapping, or `--column_mapping id=qid,context=passage` (docs/data.md)."""
    max_train_samples: Optional[int] = None
    negative_ratio: float = 0.0
    """Unanswerable questions added to the train set (`kqa.negatives`, docs/data.md): one per 1/ratio
    answerable questions (0.25: one per four), each the question paired with a passage of another article.
    Needs version_2_with_negative: true. 0: none."""
    negative_kind: str = "hard"
    """hard: the BM25-best passage of another article (Kiwi morphemes); random: a seeded random one."""
    max_eval_samples: Optional[int] = None
    preprocessing_num_workers: Optional[int] = None

    # --- features and post-processing -----------------------------------------------------------
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Window geometry (max_seq_length, doc_stride, max_query_length): flat keys in YAML and flags."""
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    """n-best decoding (n_best_size, max_answer_length, version_2_with_negative,
    null_score_diff_threshold): flat keys in YAML and flags."""

    # --- optimisation ------------------------------------------------------------------------------
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = EVAL_BATCH_SIZE
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-5
    weight_decay: float = 0.01
    layer_lr_decay: float = 1.0
    """Layer-wise learning-rate decay: each encoder layer learns at the rate of the one above it times
    this (the head at learning_rate, embeddings lowest). 1.0: one learning rate for all."""
    freeze_word_embeddings: bool = False
    """Keep the backbone's word-embedding matrix as pretrained: no gradient, no AdamW state or update.
    Multilingual encoders keep most of their parameters there (the main job's e5-small, its vocabulary
    trimmed to Korean: 39.3 M of 60.8 M), and a fine-tuning set touches few of its rows."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optim: str = "adamw_torch_fused"
    """adamw_torch_fused (one fused kernel per step; falls back to adamw_torch where this torch cannot fuse
    on the device) | adamw_torch (torch's default for-each AdamW)."""
    max_grad_norm: float = 1.0
    num_train_epochs: float = 2.0
    max_train_steps: Optional[int] = None
    """Total optimizer steps; overrides num_train_epochs when set."""
    lr_scheduler_type: str = "linear"
    """linear | cosine | constant (each after warmup)."""
    warmup_ratio: float = 0.1
    warmup_steps: int = 0
    """Overrides warmup_ratio when > 0."""
    mixed_precision: Optional[str] = None
    """Unset: Accelerate's own setting (`accelerate config`, `accelerate launch --mixed_precision`,
    ACCELERATE_MIXED_PRECISION). auto: bf16 where the GPU supports it, else fp16 on CUDA, else no.
    Or no | fp16 | bf16."""
    seed: int = 42
    group_by_length: bool = True
    """Batches of windows of similar length (shuffled mega-batches of 50 batches, each sorted by length):
    on the Korean QA data about 3 % padding instead of 47 % with random batches, so about half the
    compute per epoch (docs/benchmarks.md, training throughput). false: uniformly random batches."""
    dataloader_num_workers: int = 0

    # --- evaluation, checkpoints -----------------------------------------------------------------
    output_dir: str = "outputs/kqa"
    eval_strategy: str = "epoch"
    """epoch | steps | no"""
    eval_steps: Optional[int] = None
    save_strategy: str = "epoch"
    """epoch | steps | no: training-state checkpoints for resuming (the best model is kept apart)."""
    save_steps: Optional[int] = None
    save_total_limit: Optional[int] = 2
    metric_for_best_model: str = "f1"
    """A key of the evaluation metrics: f1 / exact_match (over all validation sets) or `<set>/f1`."""
    greater_is_better: bool = True
    early_stopping_patience: Optional[int] = None
    store_null_threshold: Optional[str] = None
    """SQuAD 2.0 mode: write into best/'s kqa_config.json the best-F1 null threshold found on a validation
    set with unanswerable questions (`first`: the first such set; or a set's name), as `kqa evaluate
    --store_null_threshold` does; every loader of best/ then uses it."""
    eval_before_training: bool = False
    """Evaluate once at step 0 (the untrained head) as a baseline in metrics.jsonl."""
    resume_from_checkpoint: Optional[str] = None
    """A checkpoint directory, or `latest` for the newest one in output_dir/checkpoints whose files all
    verify (a newer damaged one is skipped with a warning)."""
    allow_pickled_checkpoint: bool = False
    """Resume from a checkpoint in Accelerate's save_state format (written by kqa before checkpoints became
    safetensors + JSON, or under FSDP / DeepSpeed): loading it unpickles files, which can run code. Only
    for checkpoints you wrote."""

    # --- logging ---------------------------------------------------------------------------------
    logging_steps: int = 10
    report_to: str = "none"
    """none | wandb | tensorboard | all (any tracker Accelerate supports)."""
    project_name: str = "kqa"
    run_name: Optional[str] = None
    disable_tqdm: bool = False

    # --- publishing (docs/training.md, "Publish to the Hub") ----------------------------------------
    model_license: Optional[str] = None
    """The license in the model card's metadata (e.g. apache-2.0, cc-by-sa-4.0); unset: the base model's
    card's license when that card is on this machine, else none."""
    push_to_hub: bool = False
    """Upload best/ (or final/ without evaluation) to `hub_model_id` at the end of the run."""
    hub_model_id: Optional[str] = None
    """The Hub repository (`user/name`), created when missing."""
    hub_private: bool = False
    """Create the repository private (an existing one keeps its visibility)."""
    hub_token: Optional[str] = field(default=None, repr=False)
    """Unset: huggingface_hub's own (HF_TOKEN, or `hf auth login`). Never written to train_config.yaml."""
    hub_strategy: str = "end"
    """end: push when the run finishes; best: also after each new best/."""

    def __post_init__(self) -> None:
        for name, section in _NESTED.items():  # TrainConfig(**yaml.safe_load(saved_config)) works too
            if isinstance(getattr(self, name), dict):
                setattr(self, name, section(**getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        choices = {
            "eval_strategy": ("epoch", "steps", "no"),
            "save_strategy": ("epoch", "steps", "no"),
            "mixed_precision": (None, *MIXED_PRECISIONS),
            "lr_scheduler_type": ("linear", "cosine", "constant"),
            "optim": ("adamw_torch_fused", "adamw_torch"),
            "hub_strategy": HUB_STRATEGIES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(map(str, allowed))}")
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise ValueError("eval_strategy=steps needs eval_steps")
        if self.save_strategy == "steps" and not self.save_steps:
            raise ValueError("save_strategy=steps needs save_steps")
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.attention_dropout = str(self.attention_dropout)  # YAML gives 0.1 as a number
        if self.attention_dropout not in ("auto", "model"):
            try:
                value = float(self.attention_dropout)
            except ValueError:
                value = -1.0
            if not 0 <= value < 1:
                raise ValueError(
                    f"attention_dropout={self.attention_dropout!r}: expected auto, model or a number in [0, 1)"
                )
        if not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        self._validate_negatives()
        if not self.train_files and not self.dataset_name:
            raise ValueError("give train_files or dataset_name")
        if self.store_null_threshold and not self.postprocess.version_2_with_negative:
            raise ValueError("store_null_threshold needs version_2_with_negative (a null answer to tune)")
        if self.store_null_threshold and self.eval_strategy == "no":
            raise ValueError("store_null_threshold needs evaluation (eval_strategy is 'no')")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (the Hub repository, user/name)")
        if isinstance(self.column_mapping, str):  # YAML may give the flag form
            self.column_mapping = parse_column_mapping(self.column_mapping)
        check_mapping_fields(self.column_mapping)

    def _validate_negatives(self) -> None:
        negative_settings(self)  # the ratio's range and the kind
        if self.negative_ratio and not self.postprocess.version_2_with_negative:
            raise ValueError(
                f"negative_ratio={self.negative_ratio} adds unanswerable questions: it needs "
                "version_2_with_negative: true (the model must be able to answer nothing)"
            )

    def resolved_attention_dropout(self, device_type: str) -> Optional[float]:
        """The attention dropout to build the model with on `device_type` (None: the config's own)."""
        if self.attention_dropout == "model":
            return None
        if self.attention_dropout == "auto":
            return 0.0 if device_type == "cpu" else None
        return float(self.attention_dropout)

    # --- data-file resolution --------------------------------------------------------------------
    def resolved_data_dir(self) -> Optional[Path]:
        d = self.data_dir or os.environ.get("KQA_DATA_DIR")
        return Path(d).expanduser() if d else None

    def resolve_data_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        base = self.resolved_data_dir()
        if not p.is_absolute() and base is not None:
            p = base / p
        return p

    def named_validation_files(self) -> dict[str, Path]:
        """`name=path` entries keep their name; plain paths are named by their file stem."""
        named: dict[str, Path] = {}
        for entry in self.validation_files:
            name, sep, path = entry.partition("=")
            if not sep:
                name, path = Path(entry).stem, entry
            if name in named:
                raise ValueError(f"two validation sets are named {name!r}; use name=path to tell them apart")
            named[name] = self.resolve_data_path(path)
        return named

    @classmethod
    def from_flat(cls, **values: Any) -> TrainConfig:
        """A TrainConfig from flat keys, as YAML and flags give them: the fields of FeatureConfig and
        PostprocessConfig (`max_seq_length=64`, `n_best_size=5`) go to those dataclasses."""
        nested = {}
        for name, section in _NESTED.items():
            names = {f.name for f in dataclasses.fields(section)}
            nested[name] = section(**{k: values.pop(k) for k in list(values) if k in names})
        return cls(**values, **nested)

    @property
    def prediction_settings(self) -> PredictionSettings:
        """What the saved model needs to predict the way it was evaluated (its kqa_config.json)."""
        return PredictionSettings(features=self.features, postprocess=self.postprocess)

    def to_dict(self) -> dict[str, Any]:
        """Every setting but the secrets: what train_config.yaml and the trackers receive."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in SECRET_FIELDS}

    def hub_options(self) -> dict[str, Any]:
        """How model_name_or_path is fetched when it is a hub id: `kqa.hub.resolve_model_dir`'s keywords."""
        return {
            "revision": self.model_revision,
            "token": self.model_token,
            "cache_dir": self.model_cache_dir,
            "local_files_only": self.model_local_files_only,
        }

    def to_flat_dict(self) -> dict[str, Any]:
        """Every setting under its flat key, as flags and YAML name them (for trackers)."""
        flat = {k: v for k, v in self.to_dict().items() if k not in _NESTED}
        for name in _NESTED:
            flat.update(dataclasses.asdict(getattr(self, name)))
        return flat

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")


# --- YAML + CLI -----------------------------------------------------------------------------------


def _field_kind(tp: Any) -> tuple[type, bool, bool]:
    """(scalar type, is_optional, is_list) of a dataclass field annotation."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin is list:
        return typing.get_args(tp)[0], optional, True
    return tp, optional, False


def _scalar_parser(tp: type, optional: bool):
    base = parse_bool if tp is bool else tp

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return base(text)

    return parse


# TrainConfig fields that are dataclasses of a stage: their fields are flat flags and YAML keys.
_NESTED = SETTING_SECTIONS  # features:, postprocess: (kqa.prediction owns the map)


def _flag_fields() -> list[tuple[dataclasses.Field, Any]]:
    """(field, annotation) of every flag: TrainConfig's own fields and those of its nested configs."""
    out = []
    for owner in (TrainConfig, *_NESTED.values()):
        hints = typing.get_type_hints(owner)
        out.extend((f, hints[f.name]) for f in dataclasses.fields(owner) if f.name not in _NESTED)
    return out


def build_arg_parser(
    description: str = "Fine-tune an encoder for Korean extractive QA.", prog: Optional[str] = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file with TrainConfig fields; flags override it")
    for f, hint in _flag_fields():
        tp, optional, is_list = _field_kind(hint)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        if typing.get_origin(tp) is dict:
            kwargs.update(type=parse_column_mapping_flag, help="(field=column pairs, comma-separated)")
        elif is_list:
            kwargs.update(nargs="+", type=tp, help=f"(list of {tp.__name__})")
        elif tp is bool:
            kwargs.update(nargs="?", const=True, type=parse_bool, help="(bool)")
        else:
            kwargs.update(type=_scalar_parser(tp, optional), help=f"({tp.__name__}{', or none' if optional else ''})")
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file of flat keys (`max_seq_length: 512`); the nested `features:` / `postprocess:` mappings
    that `TrainConfig.save` writes are read as well."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_utf8_text(path)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
    flat: dict[str, Any] = {k: v for k, v in data.items() if k not in _NESTED}
    for name in _NESTED:
        nested = data.get(name) or {}
        if not isinstance(nested, dict):
            raise ValueError(f"{path}: {name!r} must be a mapping of its fields, got {type(nested).__name__}")
        twice = sorted(set(nested) & set(flat))
        if twice:
            raise ValueError(f"{path}: {', '.join(twice)} given both flat and under {name!r}")
        flat.update(nested)
    known = {f.name for f, _ in _flag_fields()}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys: {', '.join(unknown)}")
    return flat


def parse_config(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> TrainConfig:
    """Build a TrainConfig from `--config file.yaml` and flags (flags win); `prog` names the command in errors."""
    args = build_arg_parser(prog=prog).parse_args(argv)
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    for key in ("train_files", "validation_files"):  # a single YAML string is accepted for a list
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    if isinstance(values.get("validation_files"), dict):  # YAML mapping {name: path}
        values["validation_files"] = [f"{name}={path}" for name, path in values["validation_files"].items()]
    return TrainConfig.from_flat(**values)


def negative_settings(cfg: TrainConfig) -> NegativeSettings:
    """The train set's negatives (`kqa.negatives`) as the config names them, seeded by the run's seed."""
    return NegativeSettings(ratio=cfg.negative_ratio, kind=cfg.negative_kind, seed=cfg.seed)


def emulated_bf16_warning(mixed_precision: Optional[str], device_type: str) -> Optional[str]:
    """A warning for bf16 autocast on a CPU without native bf16 instructions (AVX512_BF16; AMX CPUs have
    them too): there torch emulates bf16 matmuls, slower than fp32. None where nothing is wrong."""
    if device_type != "cpu" or mixed_precision != "bf16":
        return None
    from kqa.inference.runtimes import cpu_features

    if "AVX512BF16" in cpu_features():
        return None
    return (
        "mixed_precision bf16 on a CPU without native bf16 (no AVX512_BF16): the matmuls are emulated and "
        "slower than fp32; use mixed_precision no on this machine (docs/results.md, study rows 10-11)"
    )


def resolve_mixed_precision(requested: Optional[str]) -> Optional[str]:
    """The `mixed_precision` to give `Accelerator`.

    None (unset) stays None, so Accelerate applies its own setting: `accelerate config`, `accelerate
    launch --mixed_precision`, or ACCELERATE_MIXED_PRECISION. `auto` is bf16 where the GPU supports it,
    fp16 on other CUDA GPUs (V100, T4), and no on the CPU."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"
