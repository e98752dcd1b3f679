"""Inference backends for a saved kqa model: PyTorch (any dtype), PyTorch with int8 dynamic
quantisation, and ONNX Runtime (an exported `model.onnx`, fp32 or int8).

Every backend is an object that `kqa.prediction.predict_logits` runs like the training model: it has
`eval()`, a `device` and is called with a collated batch (`input_ids`, `attention_mask`,
[`token_type_ids`]) returning an object with `.start_logits`, `.end_logits` (torch tensors) and
`.loss`. So evaluation, `QuestionAnswerer` and `kqa predict` decode the logits of every backend with
the same post-processor.

    qa = QuestionAnswerer.from_pretrained("outputs/kqa/best", backend="torch-int8")
    export_onnx("outputs/kqa/best", "outputs/kqa/onnx-int8", quantize="int8")   # kqa export …
    qa = QuestionAnswerer.from_pretrained("outputs/kqa/onnx-int8")             # loads with onnx

An export directory holds `model.onnx`, the tokenizer files, `config.json` and `kqa_config.json`
copied from the source model, `onnx_export.json` (how it was made, on which CPU, and how close its
logits are to the PyTorch model's) and `onnx_probes.safetensors` (a few token batches with the PyTorch
model's fp32 logits). Loading an int8 export runs the probes on the spot: int8 kernels differ between
CPUs, so a drift past the one measured at export is reported (`int8_drift`: warn, error or ignore).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-int8", "onnx")
ONNX_FILE = "model.onnx"
ONNX_EXPORT_INFO_FILE = "onnx_export.json"
ONNX_PROBES_FILE = "onnx_probes.safetensors"
EXPORT_FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("start_logits", "end_logits")
# ONNX Runtime's transformer optimizer fuses attention, embeddings + LayerNorm, GELU and residual +
# LayerNorm of these encoder types; others run with ONNX Runtime's own graph optimisations only.
FUSABLE_MODEL_TYPES = {"bert": "bert"}
# An fp32 export whose logits differ more than this from the PyTorch model's is not written.
FP32_TOLERANCE = 1e-3
# Loading an int8 export: its probe logits may differ from the fp32 ones by up to DRIFT_FACTOR times the
# difference measured at export, or by that difference plus DRIFT_MARGIN, whichever is larger, before the
# load reports a drift (the same kernels give the same difference to ~1e-6 on any CPU).
DRIFT_FACTOR = 2.0
DRIFT_MARGIN = 0.05
DRIFT_ACTIONS = ("warn", "error", "ignore")
INT8_WEIGHT_TYPES = ("uint8", "int8")
# The CPU features that decide which int8 kernels ONNX Runtime and PyTorch run (numpy's run-time CPUID
# detection: it sees the CPU a process runs on, an emulated one included).
INT8_CPU_FEATURES = ("AVX2", "AVX512F", "AVX512BW", "AVX512VNNI", "AVX512BF16", "AVX512FP16")


def cpu_features() -> list[str]:
    """The features of `INT8_CPU_FEATURES` this CPU has, e.g. ["AVX2"] or ["AVX2", "AVX512F", …]."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as found
    return [name for name in INT8_CPU_FEATURES if found.get(name)]


@dataclass(frozen=True)
class Int8Settings:
    """How `kqa export --quantize int8` quantises the fp32 graph (`onnxruntime.quantization.
    quantize_dynamic`: int8 weights, activations quantised per batch at run time).

    `weight_type`: "uint8" (default) multiplies uint8 activations by uint8 weights, which ONNX Runtime
    computes exactly on every x86-64 CPU; "int8" (uint8 × int8) is summed in pairs into 16 bits on CPUs
    without VNNI (AVX2, AVX-512 before Cascade Lake), where large products saturate and answers change
    (docs/inference.md measures both). `reduce_range` quantises weights to 7 bits (avoids that
    saturation, loses precision). `span_head_fp32` keeps the hidden → 2 span head in float: it costs
    nothing and its logits are the output."""

    weight_type: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    span_head_fp32: bool = True

    def __post_init__(self):
        if self.weight_type not in INT8_WEIGHT_TYPES:
            raise ValueError(f"int8 weight_type must be one of {', '.join(INT8_WEIGHT_TYPES)}, "
                             f"got {self.weight_type!r}")


# ---- names ------------------------------------------------------------------------------------------


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def resolve_dtype(dtype: Any) -> Optional[torch.dtype]:
    """None, a torch dtype or its name ("bfloat16", "bf16", …) → a torch floating dtype (or None)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    return dtype


def default_backend(model_dir: str | Path) -> str:
    """"onnx" for a directory holding an exported `model.onnx`, else "torch"."""
    return "onnx" if (Path(model_dir) / ONNX_FILE).is_file() else "torch"


# ---- PyTorch ----------------------------------------------------------------------------------------


def quantize_torch_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (float32, on the CPU) with every `nn.Linear` replaced by PyTorch's dynamic int8
    linear (weights int8 per tensor, activations quantised per batch at run time). CPU only."""
    model = model.to("cpu", torch.float32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization is moving to torchao
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation functions are deprecated
        # Per-channel weight scales: per-tensor ones lose ~20 F1 points on multilingual-e5-small.
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        # The span head (hidden → 2) stays fp32: it costs nothing and its logits are the output.
        spec = {name: qconfig for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and not name.startswith("qa_outputs")}
        quantized = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
    for module in quantized.modules():
        if type(module).__name__ == "Linear" and hasattr(module, "_packed_params") and hasattr(module, "version"):
            # Version 4 modules quantise activations to 7 bits (`reduce_range=True`, against int16
            # overflow on CPUs without VNNI); the older call path quantises them to the full 8 bits.
            module.version = 3
    return quantized


def load_torch_model(model_dir: str | Path, *, backend: str = "torch", dtype: Any = None,
                     trust_remote_code: bool = False):
    """The saved `QuestionAnsweringModel`, cast to `dtype` ("torch") or int8-quantised ("torch-int8")."""
    from kqa.modeling import QuestionAnsweringModel

    check_backend(backend)
    model_dir = Path(model_dir)
    dtype = resolve_dtype(dtype)
    if backend == "torch-int8" and dtype not in (None, torch.float32):
        raise ValueError("backend 'torch-int8' quantises float32 weights; it takes no dtype")
    if (model_dir / ONNX_FILE).is_file() and not any(model_dir.glob("model*.safetensors*")):
        raise FileNotFoundError(f"{model_dir} holds an ONNX export only (no PyTorch weights); "
                                f"load it with backend='onnx'")
    model = QuestionAnsweringModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if backend == "torch-int8":
        return quantize_torch_int8(model)
    return model.to(dtype or torch.float32).eval()


# ---- ONNX Runtime -----------------------------------------------------------------------------------


@dataclass
class OnnxOutput:
    loss: Optional[torch.Tensor]
    start_logits: torch.Tensor
    end_logits: torch.Tensor


_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxQuestionAnsweringModel:
    """An ONNX Runtime session with the calling convention of `QuestionAnsweringModel`: `model(**batch)`
    with torch tensors → `.start_logits`, `.end_logits` (float32 torch tensors on the CPU) and `.loss`
    (when `start_positions` and `end_positions` are given). `eval()`, `to("cpu")` and `device` let
    `kqa.prediction.predict_logits` run it as it runs a PyTorch model.

    `num_threads` (ONNX Runtime's intra-op threads) defaults to `torch.get_num_threads()`, so both
    backends use the same cores. `profile_prefix` turns on ONNX Runtime's profiler."""

    def __init__(self, path: str | Path, *, num_threads: Optional[int] = None, config=None,
                 providers: Optional[list[str]] = None, profile_prefix: Optional[str] = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        self.num_threads = int(num_threads or torch.get_num_threads())
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if profile_prefix:  # ONNX Runtime's own profiler (per-node times; `session.end_profiling()`)
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_prefix)
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_types = {i.name: _NUMPY_TYPES.get(i.type, np.int64) for i in self.session.get_inputs()}
        missing = [n for n in ("input_ids",) if n not in self.input_types]
        outputs = [o.name for o in self.session.get_outputs()]
        if missing or any(n not in outputs for n in OUTPUT_NAMES):
            raise ValueError(f"{self.path}: not a kqa span model export (inputs {sorted(self.input_types)}, "
                             f"outputs {outputs}; expected input_ids, … → start_logits, end_logits)")
        self.config = config
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.drift: Optional[DriftCheck] = None  # set by load_onnx_model for int8 exports

    def eval(self) -> "OnnxQuestionAnsweringModel":
        return self

    def to(self, device=None, *args, **kwargs) -> "OnnxQuestionAnsweringModel":
        if device is not None and not isinstance(device, torch.dtype) and torch.device(device).type != "cpu":
            raise ValueError(f"the onnx backend runs on the CPU (ONNX Runtime's CPU provider), not {device}")
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 token_type_ids: Optional[torch.Tensor] = None, start_positions: Optional[torch.Tensor] = None,
                 end_positions: Optional[torch.Tensor] = None) -> OnnxOutput:
        from kqa.modeling import span_cross_entropy

        if (start_positions is None) != (end_positions is None):
            raise ValueError("give both start_positions and end_positions, or neither")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if token_type_ids is not None and "token_type_ids" not in self.input_types:
            raise ValueError(f"{self.path} takes no token_type_ids (it was exported without them); build "
                             "features with this model's own tokenizer")
        feeds = {}
        for name, np_type in self.input_types.items():
            value = given.get(name)
            if value is None:
                if name == "attention_mask":
                    value = torch.ones_like(input_ids)
                elif name == "token_type_ids":
                    value = torch.zeros_like(input_ids)  # what the encoder assumes when none are given
                else:
                    raise ValueError(f"{self.path} needs the input {name!r}")
            feeds[name] = value.detach().cpu().numpy().astype(np_type, copy=False)
        start, end = self.session.run(list(OUTPUT_NAMES), feeds)
        start_logits, end_logits = torch.from_numpy(start).float(), torch.from_numpy(end).float()
        loss = None
        if start_positions is not None:
            loss = span_cross_entropy(start_logits, end_logits, start_positions.cpu(), end_positions.cpu(),
                                      None if attention_mask is None else attention_mask.cpu())
        return OnnxOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)

    forward = __call__


@dataclass
class DriftCheck:
    """An int8 export's probe logits on this CPU against the fp32 logits kept with it: `max_abs_diff`
    here, `export_max_abs_diff` where it was exported (on `export_cpu`), and the `bound` past which the
    load reports it."""

    max_abs_diff: float
    export_max_abs_diff: float
    bound: float
    cpu: list[str]
    export_cpu: list[str]

    @property
    def drifted(self) -> bool:
        return not self.max_abs_diff <= self.bound

    def describe(self, where: str | Path) -> str:
        return (f"{where}: this int8 export's logits differ from the fp32 model's by {self.max_abs_diff:.3g} on this "
                f"CPU ({', '.join(self.cpu) or 'no AVX2'}) against {self.export_max_abs_diff:.3g} where it was "
                f"exported ({', '.join(self.export_cpu) or 'CPU not recorded'}); bound {self.bound:.3g}. Its answers "
                "may differ from those measured at export: use an fp32 export (`kqa export` without --quantize, "
                "exact on every CPU), or export int8 again with the default settings")


def drift_bound(export_max_abs_diff: float) -> float:
    return max(DRIFT_FACTOR * export_max_abs_diff, export_max_abs_diff + DRIFT_MARGIN)


def read_probes(model_dir: str | Path) -> tuple[list[dict[str, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The probe batches of an export and the PyTorch model's fp32 (start, end) logits on them."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(model_dir) / ONNX_PROBES_FILE))
    count = len({key.split(".", 1)[0] for key in tensors})
    batches, reference = [], []
    for i in range(count):
        batches.append({name: tensors[f"{i}.{name}"] for name in INPUT_NAMES if f"{i}.{name}" in tensors})
        reference.append((tensors[f"{i}.start_logits"], tensors[f"{i}.end_logits"]))
    return batches, reference


def write_probes(path: Path, batches, reference) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, (batch, (start, end)) in enumerate(zip(batches, reference)):
        tensors.update({f"{i}.{name}": value.contiguous() for name, value in batch.items()})
        tensors[f"{i}.start_logits"], tensors[f"{i}.end_logits"] = start.contiguous(), end.contiguous()
    save_file(tensors, str(path))


def read_export_info(model_dir: str | Path) -> dict:
    """The `onnx_export.json` of an export directory ({} when there is none)."""
    path = Path(model_dir) / ONNX_EXPORT_INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def measure_int8_drift(model: "OnnxQuestionAnsweringModel", model_dir: str | Path, info: dict) -> Optional[DriftCheck]:
    """Run an int8 export's probes on this CPU and compare with the fp32 logits kept with it. None for an
    fp32 export, or for one made before probes were kept (nothing to compare)."""
    model_dir = Path(model_dir)
    if info.get("quantize") != "int8" or not (model_dir / ONNX_PROBES_FILE).is_file():
        return None
    batches, reference = read_probes(model_dir)
    exported = float(info["max_abs_diff"])
    return DriftCheck(max_abs_diff=_max_diff(model, reference, batches), export_max_abs_diff=exported,
                      bound=drift_bound(exported), cpu=cpu_features(), export_cpu=list(info.get("cpu", [])))


def check_int8_drift(model: "OnnxQuestionAnsweringModel", model_dir: str | Path, info: dict,
                     on_drift: str = "warn") -> Optional[DriftCheck]:
    """`measure_int8_drift`, then warn (or raise ValueError, `on_drift="error"`) when the difference here
    passes `drift_bound` of the one measured at export; "ignore" skips the check."""
    if on_drift not in DRIFT_ACTIONS:
        raise ValueError(f"int8_drift must be one of {', '.join(DRIFT_ACTIONS)}, got {on_drift!r}")
    if on_drift == "ignore":
        return None
    check = measure_int8_drift(model, model_dir, info)
    if check is not None and check.drifted:
        if on_drift == "error":
            raise ValueError(check.describe(model_dir) + "; or load with int8_drift='warn' to use it anyway")
        logger.warning(check.describe(model_dir))
    return check


def load_onnx_model(model_dir: str | Path, *, num_threads: Optional[int] = None, trust_remote_code: bool = False,
                    int8_drift: str = "warn") -> OnnxQuestionAnsweringModel:
    """The `model.onnx` of an export directory in an ONNX Runtime session. An int8 export is checked on
    its probes first (`check_int8_drift`; the result is the model's `drift`)."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    path = model_dir / ONNX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no {ONNX_FILE}; make one with "
                                f"`kqa export --model {model_dir} --format onnx --out DIR`")
    config = None
    if (model_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model = OnnxQuestionAnsweringModel(path, num_threads=num_threads, config=config)
    model.drift = check_int8_drift(model, model_dir, read_export_info(model_dir), int8_drift)
    return model


def load_model(model_dir: str | Path, *, backend: Optional[str] = None, dtype: Any = None,
               num_threads: Optional[int] = None, trust_remote_code: bool = False, int8_drift: str = "warn"):
    """The model of `model_dir` for `backend` (default: "onnx" when the directory holds `model.onnx`,
    else "torch"). `dtype` is for the torch backend; `num_threads` and `int8_drift` (what to do when an
    int8 export's logits drift on this CPU: "warn", "error" or "ignore") for the onnx backend."""
    backend = check_backend(backend or default_backend(model_dir))
    if int8_drift not in DRIFT_ACTIONS:
        raise ValueError(f"int8_drift must be one of {', '.join(DRIFT_ACTIONS)}, got {int8_drift!r}")
    if backend == "onnx":
        if resolve_dtype(dtype) not in (None, torch.float32):
            raise ValueError("the onnx backend runs the exported graph's own precision; it takes no dtype")
        return load_onnx_model(model_dir, num_threads=num_threads, trust_remote_code=trust_remote_code,
                               int8_drift=int8_drift)
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    return load_torch_model(model_dir, backend=backend, dtype=dtype, trust_remote_code=trust_remote_code)


# ---- export -----------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how close the exported model's logits are to the PyTorch model's
    (max absolute difference over the real, unpadded tokens of the probe batches), measured on the CPU
    whose features `cpu` lists."""

    out_dir: str
    source: str
    format: str = "onnx"
    quantize: Optional[str] = None
    int8: Optional[dict] = None
    opset: int = 17
    inputs: list[str] = field(default_factory=list)
    fused: dict[str, int] = field(default_factory=dict)
    max_abs_diff_fp32: float = float("nan")
    max_abs_diff: float = float("nan")
    checked_shapes: list[list[int]] = field(default_factory=list)
    cpu: list[str] = field(default_factory=cpu_features)
    onnx_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class _SpanGraph(torch.nn.Module):
    """The model as a function of its input tensors only → (start_logits, end_logits)."""

    def __init__(self, model, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors):
        out = self.model(**dict(zip(self.input_names, tensors)))
        return out.start_logits.float(), out.end_logits.float()


def _model_input_names(model, tokenizer) -> tuple[str, ...]:
    wanted = set(getattr(tokenizer, "model_input_names", INPUT_NAMES))
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in wanted and model._backbone_takes_token_type_ids:
        names.append("token_type_ids")
    return tuple(names)


def _check_batches(vocab_size: int, names: tuple[str, ...], width: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random token batches of several shapes (right padding, two segments) to compare logits on."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for batch_size, length in ((1, 9), (3, 45), (2, min(width, 512))):
        ids = torch.randint(5, max(6, vocab_size), (batch_size, length), generator=generator)
        mask = torch.ones_like(ids)
        types = torch.zeros_like(ids)
        types[:, length // 3:] = 1
        if batch_size > 1:
            mask[-1, length // 2:] = 0
            types[-1, length // 2:] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        batches.append({k: v for k, v in batch.items() if k in names})
    return batches


def _max_diff(session_model: OnnxQuestionAnsweringModel, reference: list[tuple], batches) -> float:
    worst = 0.0
    for batch, (start, end) in zip(batches, reference):
        out = session_model(**batch)
        real = batch["attention_mask"].bool()
        for got, want in ((out.start_logits, start), (out.end_logits, end)):
            worst = max(worst, float((got - want).abs()[real].max()))
    return worst


def _fuse(path: Path, out: Path, config) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (attention, embedding, GELU and LayerNorm fusion)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimizer_logger = logging.getLogger("onnxruntime.transformers")
    level = optimizer_logger.level
    optimizer_logger.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(str(path), model_type=FUSABLE_MODEL_TYPES[config.model_type],
                                   num_heads=config.num_attention_heads, hidden_size=config.hidden_size,
                                   opt_level=0)
        optimized.save_model_to_file(str(out))
        stats = optimized.get_fused_operator_statistics()
    finally:
        optimizer_logger.setLevel(level)
    return {k: int(v) for k, v in stats.items() if v}


def span_head_nodes(path: Path) -> list[str]:
    """The MatMul nodes of the span head (hidden → start/end logits) in an exported graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type == "MatMul" and "/qa_outputs/" in node.name]


def quantize_int8(fp32: Path, out: Path, settings: Int8Settings) -> None:
    """Dynamic int8 quantisation of an fp32 graph: the weights of every MatMul with constant weights and
    of the fused attention, as `settings` say; activations are quantised per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QUInt8 if settings.weight_type == "uint8" else QuantType.QInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantisation
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=weight_type, per_channel=settings.per_channel,
                         reduce_range=settings.reduce_range, op_types_to_quantize=["MatMul", "Attention"],
                         nodes_to_exclude=span_head_nodes(fp32) if settings.span_head_fp32 else None,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})  # 1: float
    finally:
        root.setLevel(level)


def _check_export_arguments(model_dir: Path, out_dir: Path, quantize: Optional[str]) -> None:
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"unknown quantisation {quantize!r}; choose one of {', '.join(QUANTIZATIONS)} (or none)")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a directory; export takes a saved kqa model directory")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; not a saved model directory (export takes the "
                                f"best/ or final/ directory of a training run)")
    if (model_dir / ONNX_FILE).is_file() and not any(model_dir.glob("model*.safetensors*")):
        raise ValueError(f"{model_dir} is already an ONNX export; export from the PyTorch model directory")
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError("--out must be a new directory, not the model directory")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / ONNX_EXPORT_INFO_FILE).is_file())):
        raise ValueError(f"{out_dir} exists and is not an empty directory or an earlier export; "
                              "choose a new directory")


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, quantize: Optional[str] = None, opset: int = 17,
                optimize: bool = True, trust_remote_code: bool = False, tolerance: float = FP32_TOLERANCE,
                int8: Optional[Int8Settings] = None) -> ExportReport:
    """Export a saved kqa model to `out_dir/model.onnx` (dynamic batch and sequence axes; inputs
    `input_ids`, `attention_mask`[, `token_type_ids`], outputs `start_logits`, `end_logits`), with
    the tokenizer files, `config.json` and `kqa_config.json` beside it, so that
    `QuestionAnswerer.from_pretrained(out_dir)` loads it with the onnx backend.

    With `optimize` (default), BERT encoders get ONNX Runtime's transformer fusions. `quantize="int8"`
    then quantises the weights of every MatMul / attention as `int8` (an `Int8Settings`, default: uint8
    weights per channel, span head fp32) say. The fp32 graph is checked against the PyTorch model on
    random probe batches of several shapes before anything is written: a fused graph off by more than
    `tolerance` falls back to the unfused one, an unfused one is an error. The int8 difference is
    measured on this CPU and reported (it is not bounded: quantisation changes the logits); the probes
    and their fp32 logits are kept with the export, so that loading it elsewhere can measure it again."""
    from transformers import AutoTokenizer

    from kqa.modeling import KQA_CONFIG_FILE, QuestionAnsweringModel
    from kqa.prediction import load_settings

    t0 = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_export_arguments(model_dir, out_dir, quantize)
    if int8 is not None and quantize != "int8":
        raise ValueError("int8 settings are for quantize='int8'")
    int8 = (int8 or Int8Settings()) if quantize == "int8" else None

    model = QuestionAnsweringModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    config = model.config
    if hasattr(model.backbone, "set_attn_implementation"):
        try:  # the plain attention graph: what ONNX Runtime's fusions recognise (same numbers as sdpa)
            model.backbone.set_attn_implementation("eager")
        except (ValueError, ImportError):
            pass
    names = _model_input_names(model, tokenizer)
    width = load_settings(model_dir).features.max_seq_length
    batches = _check_batches(config.vocab_size, names, width)
    with torch.no_grad():
        reference = [tuple(t.float() for t in _SpanGraph(model, names)(*b.values())) for b in batches]
    report = ExportReport(out_dir=str(out_dir), source=str(model_dir), quantize=quantize, opset=opset,
                          int8=asdict(int8) if int8 else None, inputs=list(names),
                          checked_shapes=[list(b["input_ids"].shape) for b in batches])

    with tempfile.TemporaryDirectory(prefix="kqa-export-") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw.onnx"
        dynamic = {n: {0: "batch", 1: "sequence"} for n in (*names, *OUTPUT_NAMES)}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes about Python branches on shapes (checked below)
            # The TorchScript exporter: its graph is the one ONNX Runtime's BERT fusions match.
            torch.onnx.export(_SpanGraph(model, names), tuple(batches[1].values()), str(raw),
                              input_names=list(names), output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        fp32 = raw
        if optimize and getattr(config, "model_type", None) in FUSABLE_MODEL_TYPES:
            fused = tmp / "fused.onnx"
            try:
                report.fused = _fuse(raw, fused, config)
                diff = _max_diff(OnnxQuestionAnsweringModel(fused, num_threads=1), reference, batches)
                if diff <= tolerance:
                    fp32 = fused
                else:
                    logger.warning("%s: the fused graph's logits differ by %.2g from PyTorch's; exporting the "
                                   "unfused graph", model_dir, diff)
                    report.fused = {}
            except Exception as err:  # noqa: BLE001 - a fusion failure leaves the plain export usable
                logger.warning("%s: ONNX Runtime's transformer fusions failed (%s); exporting the unfused graph",
                               model_dir, err)
                report.fused = {}
        report.max_abs_diff_fp32 = _max_diff(OnnxQuestionAnsweringModel(fp32, num_threads=1), reference, batches)
        if not report.max_abs_diff_fp32 <= tolerance:
            raise RuntimeError(f"{model_dir}: the exported graph's logits differ by {report.max_abs_diff_fp32:.3g} "
                               f"from the PyTorch model's (tolerance {tolerance}); not writing {out_dir}")
        final = fp32
        if int8 is not None:
            final = tmp / "int8.onnx"
            quantize_int8(fp32, final, int8)
        report.max_abs_diff = (report.max_abs_diff_fp32 if final is fp32 else
                               _max_diff(OnnxQuestionAnsweringModel(final, num_threads=1), reference, batches))

        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, out_dir / ONNX_FILE)
    write_probes(out_dir / ONNX_PROBES_FILE, batches, reference)
    report.onnx_bytes = (out_dir / ONNX_FILE).stat().st_size
    tokenizer.save_pretrained(str(out_dir))
    for name in ("config.json", KQA_CONFIG_FILE):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
    report.seconds = time.perf_counter() - t0
    from kqa import __version__

    info = {**report.to_dict(), "kqa_version": __version__, "torch": torch.__version__}
    (out_dir / ONNX_EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return report
