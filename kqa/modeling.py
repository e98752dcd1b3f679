"""The span-extraction model: any `transformers` encoder plus a linear start/end head.

`QuestionAnsweringModel` stores its encoder under the encoder's `base_model_prefix` (`bert`, `roberta`,
`electra`, ...) and its head as `qa_outputs = nn.Linear(hidden_size, 2)`, so its state dict has exactly the
keys of the matching `transformers` `*ForQuestionAnswering` class. A directory written by
`save_pretrained` therefore loads with `transformers.AutoModelForQuestionAnswering.from_pretrained`, and a
`*ForQuestionAnswering` directory or hub id saved by `transformers` loads with
`QuestionAnsweringModel.from_pretrained`, with the same logits (tests/test_hub_models.py checks BERT, ELECTRA,
RoBERTa, XLM-R and DeBERTa-v2).

Weights are written only as safetensors, and read as safetensors; pickle-based `.bin` files can run code when
loaded, so they are read only when the caller opts in (`allow_bin_weights=True`, `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kqa.hub import describe_model_dir, hub_repo_of, resolve_model_dir
from kqa.weights import (  # the file names are part of this module's API
    KQA_CONFIG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    find_weight_files,
    load_kqa_config,
    load_state,
    read_weights,
    remove_stale_weights,
    write_weights,
)

logger = logging.getLogger(__name__)

__all__ = [
    "KQA_CONFIG_FILE",
    "WEIGHTS_FILE",
    "WEIGHTS_INDEX_FILE",
    "QAModelOutput",
    "QuestionAnsweringModel",
    "load_kqa_config",
    "span_cross_entropy",
]


@dataclass
class QAModelOutput:
    """Start/end logits `[batch, seq_len]` (in the model's dtype) and the float32 loss when labels were given."""

    loss: Optional[torch.Tensor]
    start_logits: torch.Tensor
    end_logits: torch.Tensor


# ---- the loss ---------------------------------------------------------------------------------------


def _label_vector(positions: torch.Tensor, name: str, batch_size: int) -> torch.Tensor:
    """Positions `[batch]` or `[batch, 1]` → a long `[batch]` vector, with a clear error for anything else."""
    if positions.dim() == 2 and positions.size(1) == 1:
        positions = positions.squeeze(-1)
    if positions.dim() != 1 or positions.size(0) != batch_size:
        raise ValueError(f"{name} must have shape [batch] = [{batch_size}], got {list(positions.shape)}")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token indices, got dtype {positions.dtype}")
    return positions.long()


def span_cross_entropy(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The span loss of `transformers`' QA models, computed in float32: the mean of the start and the end
    cross-entropy. Positions at or beyond the sequence length are ignored (clamped to `seq_len`, the
    ignore index), so a label cut off by truncation contributes nothing. Negative positions are an error
    (`transformers` would silently turn them into the CLS index).

    With `attention_mask`, padding positions are left out of the softmax (`transformers` keeps them), so
    a window's loss does not depend on how much padding its batch gave it: the evaluation loss is the
    same whatever the batching, and training never spends gradient on pushing padding logits down.

    Like `transformers`, a batch whose start (or end) labels are all ignored has a NaN loss.
    """
    batch_size, seq_len = start_logits.shape
    start_positions = _label_vector(start_positions, "start_positions", batch_size)
    end_positions = _label_vector(end_positions, "end_positions", batch_size)
    # Reading a value back from an accelerator would stall every training step; there the collator has
    # already checked the labels on the host (QACollator), so only host tensors are checked here.
    on_host = start_positions.device.type == "cpu" and end_positions.device.type == "cpu"
    lowest = int(torch.minimum(start_positions.min(), end_positions.min())) if batch_size and on_host else 0
    if lowest < 0:
        raise ValueError(
            f"span labels must be token indices >= 0 (the CLS index marks a window without the answer); "
            f"got a position of {lowest}"
        )
    start_logits, end_logits = start_logits.float(), end_logits.float()
    if attention_mask is not None:
        padding = attention_mask == 0
        start_logits = start_logits.masked_fill(padding, torch.finfo(torch.float32).min)
        end_logits = end_logits.masked_fill(padding, torch.finfo(torch.float32).min)
    ignore_index = seq_len
    start_loss = F.cross_entropy(start_logits, start_positions.clamp(max=ignore_index), ignore_index=ignore_index)
    end_loss = F.cross_entropy(end_logits, end_positions.clamp(max=ignore_index), ignore_index=ignore_index)
    return (start_loss + end_loss) / 2


# ---- building encoders ------------------------------------------------------------------------------


def encoder_init_kwargs(config) -> dict[str, Any]:
    """`add_pooling_layer=False` for encoders that take it (BERT, RoBERTa, XLM-R, ...): the pooler is
    unused by a span head (and by kqa.retrieval's pooling), and leaving it out keeps the state dict equal
    to `*ForQuestionAnswering`'s."""
    from transformers import MODEL_MAPPING

    try:
        model_class = MODEL_MAPPING[type(config)]
    except (KeyError, ValueError):
        return {}  # remote-code or unregistered encoders: built as they come
    if not inspect.isclass(model_class):
        return {}
    params = inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if "add_pooling_layer" in params else {}


# Where encoder configs keep the dropout on attention probabilities (BERT/RoBERTa/XLM-R/ELECTRA/DeBERTa;
# DistilBERT/ModernBERT and others).
ATTENTION_DROPOUT_ATTRIBUTES = ("attention_probs_dropout_prob", "attention_dropout")


class NoAttentionDropoutError(ValueError):
    """The encoder config names no attention dropout (see ATTENTION_DROPOUT_ATTRIBUTES)."""


def set_attention_dropout(config, probability: float, source: str = "") -> None:
    """Set the attention-probability dropout of an encoder config, whatever its attribute is called."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"attention dropout must be in [0, 1), got {probability}")
    names = [name for name in ATTENTION_DROPOUT_ATTRIBUTES if isinstance(getattr(config, name, None), (int, float))]
    if not names:
        raise NoAttentionDropoutError(
            f"{source or type(config).__name__}: {type(config).__name__} has none of "
            f"{list(ATTENTION_DROPOUT_ATTRIBUTES)}; cannot set its attention dropout"
        )
    for name in names:
        setattr(config, name, float(probability))


def attention_dropout_of(config) -> Optional[float]:
    """The config's attention-probability dropout, or None when it names none."""
    for name in ATTENTION_DROPOUT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def question_answering_class_name(model_type: str) -> Optional[str]:
    """The `transformers` `*ForQuestionAnswering` class name for a config's `model_type`, if there is one."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

    return MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES.get(model_type)


def is_question_answering_checkpoint(model_dir: str | Path) -> bool:
    """A kqa model (`kqa_config.json`) or a checkpoint whose `config.json` names a `*ForQuestionAnswering`
    architecture: `from_pretrained` loads it with its span head. Anything else is an encoder, to start from
    with `from_backbone`."""
    model_dir = Path(model_dir)
    if (model_dir / KQA_CONFIG_FILE).is_file():
        return True
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False  # from_backbone reports what is wrong with it
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return any(str(name).endswith("ForQuestionAnswering") for name in architectures or ())


# ---- the model --------------------------------------------------------------------------------------


class QuestionAnsweringModel(nn.Module):
    """An encoder plus `qa_outputs = nn.Linear(hidden_size, 2)` giving start and end logits per token.

    `backbone` is any `transformers` encoder (`PreTrainedModel` with `base_model_prefix` and `config`)
    whose first output is the last hidden state `[batch, seq_len, hidden_size]`. `head_dropout` adds
    dropout before the head (default 0: `transformers`' QA models have none); it has no weights, so the
    checkpoint layout is the same either way.
    """

    def __init__(self, backbone: nn.Module, *, head_dropout: float = 0.0):
        super().__init__()
        prefix = getattr(backbone, "base_model_prefix", "")
        config = getattr(backbone, "config", None)
        if not prefix or config is None:
            raise TypeError(
                f"{type(backbone).__name__} is not a transformers encoder: it needs `base_model_prefix` and "
                f"`config` (load one with transformers.AutoModel)"
            )
        if prefix in {"qa_outputs", "head_dropout"} or hasattr(type(self), prefix):
            raise ValueError(
                f"{type(backbone).__name__}.base_model_prefix={prefix!r} clashes with an attribute "
                f"of {type(self).__name__}"
            )
        hidden_size = getattr(config, "hidden_size", None)
        if not isinstance(hidden_size, int):
            raise ValueError(f"{type(config).__name__} has no integer hidden_size; cannot size the span head")
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout}")

        self._backbone_prefix = prefix
        setattr(self, prefix, backbone)
        self.head_dropout = nn.Dropout(head_dropout)
        reference = next(backbone.parameters())
        self.qa_outputs = nn.Linear(hidden_size, 2, device=reference.device, dtype=reference.dtype)
        self._init_head(getattr(config, "initializer_range", 0.02))
        forward_params = inspect.signature(backbone.forward).parameters
        self._backbone_takes_token_type_ids = "token_type_ids" in forward_params

    def _init_head(self, std: float) -> None:
        """As `transformers` initialises linear layers: normal(0, initializer_range) weights, zero bias."""
        nn.init.normal_(self.qa_outputs.weight, mean=0.0, std=std)
        nn.init.zeros_(self.qa_outputs.bias)

    # ---- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | Path,
        *,
        trust_remote_code: bool = False,
        head_dropout: float = 0.0,
        attention_dropout: Optional[float] = None,
        dtype: torch.dtype = torch.float32,
        **config_overrides,
    ) -> QuestionAnsweringModel:
        """Pretrained encoder weights (a local directory or a hub name) and a freshly initialised head.

        `attention_dropout` (None: the config's own) sets the dropout on attention probabilities, whatever
        the architecture calls it. `config_overrides` set attributes of the encoder's config (e.g.
        `hidden_dropout_prob=0.0`); names the config does not have are an error. Weights are cast to
        `dtype` (float32 by default, the right master copy for mixed-precision training, whatever dtype
        the checkpoint was saved in).
        """
        from transformers import AutoConfig, AutoModel

        source = str(name_or_path)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        _apply_config_overrides(config, config_overrides, source)
        if attention_dropout is not None:
            set_attention_dropout(config, attention_dropout, source)
        backbone = AutoModel.from_pretrained(
            source, config=config, trust_remote_code=trust_remote_code, **encoder_init_kwargs(config)
        )
        return cls(backbone.to(dtype), head_dropout=head_dropout)

    @classmethod
    def from_config(
        cls, config, *, trust_remote_code: bool = False, head_dropout: float = 0.0, dtype: torch.dtype = torch.float32
    ) -> QuestionAnsweringModel:
        """A randomly initialised encoder (built from a copy of `config`) and head."""
        from transformers import AutoModel

        config = copy.deepcopy(config)
        backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code, **encoder_init_kwargs(config))
        return cls(backbone.to(dtype), head_dropout=head_dropout)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        trust_remote_code: bool = False,
        head_dropout: float = 0.0,
        attention_dropout: Optional[float] = None,
        dtype: torch.dtype = torch.float32,
        allow_bin_weights: bool = False,
        revision: Optional[str] = None,
        token: Optional[str | bool] = None,
        cache_dir: Optional[str | Path] = None,
        local_files_only: bool = False,
    ) -> QuestionAnsweringModel:
        """Load a question-answering model: a directory written by `save_pretrained`, a `transformers`
        `*ForQuestionAnswering` directory, or either as a hub id (`org/name`; `revision`, `token`,
        `cache_dir`, `local_files_only` as in `kqa.hub.resolve_model_dir`). Weights are safetensors;
        pickle-based `pytorch_model.bin` files are refused unless `allow_bin_weights=True` (then read with
        `torch.load(weights_only=True)`)."""
        from transformers import AutoConfig

        model_dir = resolve_model_dir(
            name_or_path,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_bin=allow_bin_weights,
        )
        label = describe_model_dir(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{label}: no config.json; not a saved model directory")
        weight_files = find_weight_files(model_dir, allow_bin=allow_bin_weights)
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        if attention_dropout is not None:  # e.g. to continue training a saved model with another setting
            set_attention_dropout(config, attention_dropout, label)
        model = cls.from_config(config, trust_remote_code=trust_remote_code, head_dropout=head_dropout)
        state, aliases = read_weights(weight_files)
        load_state(model, state, aliases, source=label, start_from=hub_repo_of(model_dir) or str(name_or_path))
        return model.to(dtype)

    # ---- properties -----------------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The encoder (also reachable under its `base_model_prefix`, e.g. `model.bert`)."""
        return getattr(self, self._backbone_prefix)

    @property
    def backbone_prefix(self) -> str:
        return self._backbone_prefix

    @property
    def config(self):
        """The encoder's `transformers` config."""
        return self.backbone.config

    @property
    def dtype(self) -> torch.dtype:
        """The encoder's parameter dtype."""
        return next(self.backbone.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Parameters counted once each (shared tensors are not counted twice)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # ---- gradient checkpointing -----------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute the encoder's activations in the backward pass (less memory, ~30% more compute)."""
        backbone = self.backbone
        if not getattr(backbone, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(backbone).__name__} does not support gradient checkpointing")
        if hasattr(backbone, "activation_checkpointing_enable"):  # the name since transformers 5
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        backbone = self.backbone
        if hasattr(backbone, "activation_checkpointing_disable"):
            backbone.activation_checkpointing_disable()
        elif hasattr(backbone, "gradient_checkpointing_disable"):
            backbone.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.backbone.modules())

    # ---- forward --------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        start_positions: Optional[torch.Tensor] = None,
        end_positions: Optional[torch.Tensor] = None,
    ) -> QAModelOutput:
        """Logits for every position (padding included: the post-processor only considers context
        tokens); the loss when both `start_positions` and `end_positions` are given."""
        if (start_positions is None) != (end_positions is None):
            raise ValueError("give both start_positions and end_positions, or neither")
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            if not self._backbone_takes_token_type_ids:
                raise ValueError(
                    f"{type(self.backbone).__name__} takes no token_type_ids; build features with this "
                    f"model's own tokenizer (it does not emit them)"
                )
            inputs["token_type_ids"] = token_type_ids
        hidden_states = self.backbone(**inputs)[0]
        logits = self.qa_outputs(self.head_dropout(hidden_states))
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None:
            loss = span_cross_entropy(start_logits, end_logits, start_positions, end_positions, attention_mask)
        return QAModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)

    # ---- saving ---------------------------------------------------------------------------------------
    def export_config(self):
        """A copy of the encoder config as a `transformers` QA checkpoint describes itself: `architectures`
        names the `*ForQuestionAnswering` class (when `transformers` has one for this model type), two
        labels (start, end) and the weights' dtype."""
        config = copy.deepcopy(self.config)
        qa_class = question_answering_class_name(getattr(config, "model_type", ""))
        config.architectures = [qa_class] if qa_class and self.has_transformers_layout() else None
        config.num_labels = 2
        # transformers >= 4.56 saves `dtype`; earlier releases save `torch_dtype` and cannot write a `dtype`
        setattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", self.dtype)
        return config

    def has_transformers_layout(self) -> bool:
        """True when the weights are exactly the encoder plus a `Linear(hidden_size, 2)` `qa_outputs` (a
        subclass with another head is saved without claiming a `transformers` class)."""
        head_keys = {k for k in self.state_dict() if not k.startswith(f"{self._backbone_prefix}.")}
        linear_head = type(self.qa_outputs) is nn.Linear and self.qa_outputs.out_features == 2
        return linear_head and head_keys == {"qa_outputs.weight", "qa_outputs.bias"}

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        tokenizer=None,
        kqa_config: Optional[dict[str, Any]] = None,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
    ) -> Path:
        """Write `config.json`, `model.safetensors`, the tokenizer's files (when given) and
        `kqa_config.json` (the kqa version plus `kqa_config`: `PredictionSettings.to_dict()`).

        `state_dict` replaces the module's own tensors: under FSDP or DeepSpeed ZeRO-3 a process holds
        only a shard, so the full state dict is gathered first (`accelerator.get_state_dict`).
        Returns the directory."""
        from kqa import __version__

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        payload = {**(kqa_config or {}), "kqa_version": __version__}
        try:
            kqa_json = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"kqa_config for {out} is not JSON-serialisable: {err}") from err
        remove_stale_weights(out)
        self.export_config().save_pretrained(str(out))
        self._save_remote_code(out)
        write_weights(self, out / WEIGHTS_FILE, state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        (out / KQA_CONFIG_FILE).write_text(kqa_json + "\n", encoding="utf-8")
        return out

    def _save_remote_code(self, out: Path) -> None:
        """An encoder loaded with trust_remote_code needs its code files beside the weights (config.json's
        `auto_map` names them) to load again: copy them as transformers does."""
        from transformers.dynamic_module_utils import custom_object_save

        for obj in (self.config, self.backbone):
            if _is_remote_code(obj):
                custom_object_save(obj, out)


def _is_remote_code(obj) -> bool:
    """Loaded with trust_remote_code: its class lives in a module transformers made from files beside the
    weights."""
    return type(obj).__module__.startswith("transformers_modules.")


def _apply_config_overrides(config, overrides: dict[str, Any], source: str) -> None:
    unknown = sorted(k for k in overrides if not hasattr(config, k))
    if unknown:
        raise ValueError(f"{source}: {type(config).__name__} has no attribute(s) {unknown}; cannot override them")
    for key, value in overrides.items():
        setattr(config, key, value)
