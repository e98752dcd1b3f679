"""Runtimes for a saved kqa model: PyTorch (any dtype), PyTorch with int8 dynamic quantisation, and
ONNX Runtime (an exported `model.onnx`, fp32 or int8; `kqa.inference.export` writes it).

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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-int8", "onnx")
ONNX_FILE = "model.onnx"
ONNX_EXPORT_INFO_FILE = "onnx_export.json"
ONNX_PROBES_FILE = "onnx_probes.safetensors"
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("start_logits", "end_logits")
# Loading an int8 export: its probe logits may differ from the fp32 ones by up to DRIFT_FACTOR times the
# difference measured at export, or by that difference plus DRIFT_MARGIN, whichever is larger, before the
# load reports a drift (the same kernels give the same difference to ~1e-6 on any CPU).
DRIFT_FACTOR = 2.0
DRIFT_MARGIN = 0.05
DRIFT_ACTIONS = ("warn", "error", "ignore")
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
    """ "onnx" for a directory holding an exported `model.onnx`, else "torch"."""
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
        spec = {
            name: qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.startswith("qa_outputs")
        }
        quantized = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
    for module in quantized.modules():
        if type(module).__name__ == "Linear" and hasattr(module, "_packed_params") and hasattr(module, "version"):
            # Version 4 modules quantise activations to 7 bits (`reduce_range=True`, against int16
            # overflow on CPUs without VNNI); the older call path quantises them to the full 8 bits.
            module.version = 3
    return quantized


def load_torch_model(
    model_dir: str | Path,
    *,
    backend: str = "torch",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_bin_weights: bool = False,
):
    """The saved `QuestionAnsweringModel`, cast to `dtype` ("torch") or int8-quantised ("torch-int8").
    `allow_bin_weights`: read `pytorch_model.bin` weights when there are no safetensors (kqa.weights)."""
    from kqa.modeling import QuestionAnsweringModel

    check_backend(backend)
    model_dir = Path(model_dir)
    dtype = resolve_dtype(dtype)
    if backend == "torch-int8" and dtype not in (None, torch.float32):
        raise ValueError("backend 'torch-int8' quantises float32 weights; it takes no dtype")
    if (model_dir / ONNX_FILE).is_file() and not any(model_dir.glob("model*.safetensors*")):
        raise FileNotFoundError(
            f"{model_dir} holds an ONNX export only (no PyTorch weights); load it with backend='onnx'"
        )
    model = QuestionAnsweringModel.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code, allow_bin_weights=allow_bin_weights
    )
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

    def __init__(
        self,
        path: str | Path,
        *,
        num_threads: Optional[int] = None,
        config=None,
        providers: Optional[list[str]] = None,
        profile_prefix: Optional[str] = None,
    ):
        from kqa.extras import require

        require("onnx", "onnxruntime")  # running an export needs only ONNX Runtime
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
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_types = {i.name: _NUMPY_TYPES.get(i.type, np.int64) for i in self.session.get_inputs()}
        missing = [n for n in ("input_ids",) if n not in self.input_types]
        outputs = [o.name for o in self.session.get_outputs()]
        if missing or any(n not in outputs for n in OUTPUT_NAMES):
            raise ValueError(
                f"{self.path}: not a kqa span model export (inputs {sorted(self.input_types)}, "
                f"outputs {outputs}; expected input_ids, … → start_logits, end_logits)"
            )
        self.config = config
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.drift: Optional[DriftCheck] = None  # set by load_onnx_model for int8 exports

    def eval(self) -> OnnxQuestionAnsweringModel:
        return self

    def to(self, device=None, *args, **kwargs) -> OnnxQuestionAnsweringModel:
        if device is not None and not isinstance(device, torch.dtype) and torch.device(device).type != "cpu":
            raise ValueError(f"the onnx backend runs on the CPU (ONNX Runtime's CPU provider), not {device}")
        return self

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        start_positions: Optional[torch.Tensor] = None,
        end_positions: Optional[torch.Tensor] = None,
    ) -> OnnxOutput:
        from kqa.modeling import span_cross_entropy

        if (start_positions is None) != (end_positions is None):
            raise ValueError("give both start_positions and end_positions, or neither")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if token_type_ids is not None and "token_type_ids" not in self.input_types:
            raise ValueError(
                f"{self.path} takes no token_type_ids (it was exported without them); build "
                "features with this model's own tokenizer"
            )
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
            loss = span_cross_entropy(
                start_logits,
                end_logits,
                start_positions.cpu(),
                end_positions.cpu(),
                None if attention_mask is None else attention_mask.cpu(),
            )
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
        return (
            f"{where}: this int8 export's logits differ from the fp32 model's by {self.max_abs_diff:.3g} on this "
            f"CPU ({', '.join(self.cpu) or 'no AVX2'}) against {self.export_max_abs_diff:.3g} where it was "
            f"exported ({', '.join(self.export_cpu) or 'CPU not recorded'}); bound {self.bound:.3g}. Its answers "
            "may differ from those measured at export: use an fp32 export (`kqa export` without --quantize, "
            "exact on every CPU), or export int8 again with the default settings"
        )


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


def read_export_info(model_dir: str | Path) -> dict:
    """The `onnx_export.json` of an export directory ({} when there is none)."""
    path = Path(model_dir) / ONNX_EXPORT_INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def measure_int8_drift(model: OnnxQuestionAnsweringModel, model_dir: str | Path, info: dict) -> Optional[DriftCheck]:
    """Run an int8 export's probes on this CPU and compare with the fp32 logits kept with it. None for an
    fp32 export, or for one made before probes were kept (nothing to compare)."""
    model_dir = Path(model_dir)
    if info.get("quantize") != "int8" or not (model_dir / ONNX_PROBES_FILE).is_file():
        return None
    batches, reference = read_probes(model_dir)
    exported = float(info["max_abs_diff"])
    return DriftCheck(
        max_abs_diff=max_logit_difference(model, reference, batches),
        export_max_abs_diff=exported,
        bound=drift_bound(exported),
        cpu=cpu_features(),
        export_cpu=list(info.get("cpu", [])),
    )


def check_int8_drift(
    model: OnnxQuestionAnsweringModel, model_dir: str | Path, info: dict, on_drift: str = "warn"
) -> Optional[DriftCheck]:
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


def load_onnx_model(
    model_dir: str | Path,
    *,
    num_threads: Optional[int] = None,
    trust_remote_code: bool = False,
    int8_drift: str = "warn",
) -> OnnxQuestionAnsweringModel:
    """The `model.onnx` of an export directory in an ONNX Runtime session. An int8 export is checked on
    its probes first (`check_int8_drift`; the result is the model's `drift`)."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    path = model_dir / ONNX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir}: no {ONNX_FILE}; make one with `kqa export --model {model_dir} --format onnx --out DIR`"
        )
    config = None
    if (model_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model = OnnxQuestionAnsweringModel(path, num_threads=num_threads, config=config)
    model.drift = check_int8_drift(model, model_dir, read_export_info(model_dir), int8_drift)
    return model


def load_model(
    model_dir: str | Path,
    *,
    backend: Optional[str] = None,
    dtype: Any = None,
    num_threads: Optional[int] = None,
    trust_remote_code: bool = False,
    int8_drift: str = "warn",
    allow_bin_weights: bool = False,
):
    """The model of `model_dir` for `backend` (default: "onnx" when the directory holds `model.onnx`,
    else "torch"). `dtype` and `allow_bin_weights` are for the torch backends; `num_threads` and `int8_drift`
    (what to do when an int8 export's logits drift on this CPU: "warn", "error" or "ignore") for the onnx
    backend."""
    backend = check_backend(backend or default_backend(model_dir))
    if int8_drift not in DRIFT_ACTIONS:
        raise ValueError(f"int8_drift must be one of {', '.join(DRIFT_ACTIONS)}, got {int8_drift!r}")
    if backend == "onnx":
        if resolve_dtype(dtype) not in (None, torch.float32):
            raise ValueError("the onnx backend runs the exported graph's own precision; it takes no dtype")
        return load_onnx_model(
            model_dir, num_threads=num_threads, trust_remote_code=trust_remote_code, int8_drift=int8_drift
        )
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    return load_torch_model(
        model_dir,
        backend=backend,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        allow_bin_weights=allow_bin_weights,
    )


def max_logit_difference(session_model: OnnxQuestionAnsweringModel, reference: list[tuple], batches) -> float:
    """The largest |logit − reference logit| over the real (unpadded) tokens of `batches`."""
    worst = 0.0
    for batch, (start, end) in zip(batches, reference):
        out = session_model(**batch)
        real = batch["attention_mask"].bool()
        for got, want in ((out.start_logits, start), (out.end_logits, end)):
            worst = max(worst, float((got - want).abs()[real].max()))
    return worst
