"""`kqa export`: a saved kqa model → an ONNX export directory (fp32, or int8 as `Int8Settings` say),
its logits checked against the PyTorch model's on probe batches that are kept with it
(`onnx_probes.safetensors`), so that loading it on another CPU can measure them again.
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
from typing import Optional

import torch

from kqa.inference.runtimes import (
    INPUT_NAMES,
    ONNX_EXPORT_INFO_FILE,
    ONNX_FILE,
    ONNX_PROBES_FILE,
    OUTPUT_NAMES,
    OnnxQuestionAnsweringModel,
    cpu_features,
    max_logit_difference,
)

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
# ONNX Runtime's transformer optimizer fuses attention, embeddings + LayerNorm, GELU and residual +
# LayerNorm of these encoder types; others run with ONNX Runtime's own graph optimisations only.
FUSABLE_MODEL_TYPES = {"bert": "bert"}
# An fp32 export whose logits differ more than this from the PyTorch model's is not written.
FP32_TOLERANCE = 1e-3
INT8_WEIGHT_TYPES = ("uint8", "int8")
# Kinds of encoder layers, each found by the names torch.onnx gives its nodes (module paths of BERT-style
# encoders) or by the fused attention node's type.
LAYER_KINDS = {
    "attention": ("/attention/self/",),
    "attention_output": ("/attention/output/dense/",),
    "ffn_in": ("/intermediate/dense/",),
    "ffn_out": ("/output/dense/",),
}
ONNX_OPSET = 17


@dataclass(frozen=True)
class Int8Settings:
    """How `kqa export --quantize int8` quantises the fp32 graph (`onnxruntime.quantization.
    quantize_dynamic`: int8 weights per output channel, activations quantised per batch at run time).

    The defaults are measured (docs/inference.md, "int8 on every CPU"): uint8 activations × int8 weights
    are ONNX Runtime's fast kernels, but CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) sum
    pairs of products in 16 bits, which saturates for large products; `reduce_range` (7-bit weights)
    keeps every pair sum in range, so the same export gives the same logits on every x86-64 CPU. The
    feed-forward down-projections (`ffn_out`, whose inputs are the GELU outputs with the largest
    outliers) stay in float: quantising them cost the main job's model 3 F1 points.

    `weight_type`: "int8" (default) or "uint8" (uint8 × uint8: exact on every CPU, but ONNX Runtime has
    no fast kernel for it: no speed-up over fp32, measured). `span_head_fp32` keeps the hidden → 2 span
    head in float: it costs nothing and its logits are the output. `keep_fp32` names kinds of encoder
    layers left in float (`LAYER_KINDS`: "attention" — the query/key/value projection or the fused
    attention —, "attention_output", "ffn_in", "ffn_out")."""

    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = True
    span_head_fp32: bool = True
    keep_fp32: tuple[str, ...] = ("ffn_out",)

    def __post_init__(self):
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        unknown = sorted(set(self.keep_fp32) - set(LAYER_KINDS))
        if unknown:
            raise ValueError(f"int8 keep_fp32: unknown layer kinds {unknown}; choose from {', '.join(LAYER_KINDS)}")
        if self.weight_type not in INT8_WEIGHT_TYPES:
            raise ValueError(
                f"int8 weight_type must be one of {', '.join(INT8_WEIGHT_TYPES)}, got {self.weight_type!r}"
            )


def write_probes(path: Path, batches, reference) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, (batch, (start, end)) in enumerate(zip(batches, reference)):
        tensors.update({f"{i}.{name}": value.contiguous() for name, value in batch.items()})
        tensors[f"{i}.start_logits"], tensors[f"{i}.end_logits"] = start.contiguous(), end.contiguous()
    save_file(tensors, str(path))


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
    opset: int = ONNX_OPSET
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
        types[:, length // 3 :] = 1
        if batch_size > 1:
            mask[-1, length // 2 :] = 0
            types[-1, length // 2 :] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        batches.append({k: v for k, v in batch.items() if k in names})
    return batches


def _fuse(path: Path, out: Path, config) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (attention, embedding, GELU and LayerNorm fusion)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimizer_logger = logging.getLogger("onnxruntime.transformers")
    level = optimizer_logger.level
    optimizer_logger.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            str(path),
            model_type=FUSABLE_MODEL_TYPES[config.model_type],
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=0,
        )
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


def layer_nodes(path: Path, kinds: tuple[str, ...]) -> list[str]:
    """The MatMul / Attention nodes of the given `LAYER_KINDS` in an exported graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Attention"):
            continue
        for kind in kinds:
            if kind == "attention" and node.op_type == "Attention":
                found.append(node.name)
            elif kind == "ffn_out" and "/attention/output/" in node.name:
                continue
            elif any(part in node.name for part in LAYER_KINDS[kind]):
                found.append(node.name)
    return found


def quantize_int8(fp32: Path, out: Path, settings: Int8Settings) -> None:
    """Dynamic int8 quantisation of an fp32 graph: the weights of every MatMul with constant weights and
    of the fused attention, as `settings` say; activations are quantised per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QUInt8 if settings.weight_type == "uint8" else QuantType.QInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantisation
    try:
        quantize_dynamic(
            str(fp32),
            str(out),
            weight_type=weight_type,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=(span_head_nodes(fp32) if settings.span_head_fp32 else [])
            + layer_nodes(fp32, settings.keep_fp32),
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
        )  # 1: float
    finally:
        root.setLevel(level)


def _check_export_arguments(model_dir: Path, out_dir: Path, quantize: Optional[str]) -> None:
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"unknown quantisation {quantize!r}; choose one of {', '.join(QUANTIZATIONS)} (or none)")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a directory; export takes a saved kqa model directory")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: no config.json; not a saved model directory (export takes the "
            f"best/ or final/ directory of a training run)"
        )
    if (model_dir / ONNX_FILE).is_file() and not any(model_dir.glob("model*.safetensors*")):
        raise ValueError(f"{model_dir} is already an ONNX export; export from the PyTorch model directory")
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError("--out must be a new directory, not the model directory")
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / ONNX_EXPORT_INFO_FILE).is_file())
    ):
        raise ValueError(f"{out_dir} exists and is not an empty directory or an earlier export; choose a new directory")


def export_onnx(
    name_or_path: str | Path,
    out_dir: str | Path,
    *,
    quantize: Optional[str] = None,
    opset: int = ONNX_OPSET,
    optimize: bool = True,
    trust_remote_code: bool = False,
    tolerance: float = FP32_TOLERANCE,
    int8: Optional[Int8Settings] = None,
    allow_bin_weights: bool = False,
    revision: Optional[str] = None,
    token: Optional[str | bool] = None,
    cache_dir: Optional[str | Path] = None,
    local_files_only: bool = False,
) -> ExportReport:
    """Export a saved kqa model (a directory or a hub id: `kqa.hub.resolve_model_dir` with `revision`,
    `token`, `cache_dir`, `local_files_only`; `allow_bin_weights` as in `QuestionAnsweringModel.from_pretrained`)
    to `out_dir/model.onnx` (dynamic batch and sequence axes; inputs
    `input_ids`, `attention_mask`[, `token_type_ids`], outputs `start_logits`, `end_logits`), with
    the tokenizer files, `config.json` and `kqa_config.json` beside it, so that
    `QuestionAnswerer.from_pretrained(out_dir)` loads it with the onnx backend.

    With `optimize` (default), BERT encoders get ONNX Runtime's transformer fusions. `quantize="int8"`
    then quantises the weights as `int8` (an `Int8Settings`; default: 7-bit int8 weights per channel,
    the feed-forward down-projections and the span head in float) says. The fp32 graph is checked
    against the PyTorch model on random probe batches of several shapes before anything is written: a
    fused graph off by more than `tolerance` falls back to the unfused one, an unfused one is an error.
    The int8 difference is measured on this CPU and reported (it is not bounded: quantisation changes
    the logits); the probes and their fp32 logits are kept with the export, so that loading it
    elsewhere can measure it again."""
    from transformers import AutoTokenizer

    from kqa.hub import describe_model_dir, resolve_model_dir
    from kqa.modeling import QuestionAnsweringModel

    t0 = time.perf_counter()
    hub = dict(revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
    model_dir = resolve_model_dir(name_or_path, allow_bin=allow_bin_weights, **hub)
    out_dir = Path(out_dir)
    _check_export_arguments(model_dir, out_dir, quantize)
    if int8 is not None and quantize != "int8":
        raise ValueError("int8 settings are for quantize='int8'")
    int8 = (int8 or Int8Settings()) if quantize == "int8" else None

    # 1. the PyTorch model and its fp32 logits on the probe batches
    model = QuestionAnsweringModel.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code, allow_bin_weights=allow_bin_weights
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    names, batches, reference = _probe_reference(model, tokenizer, model_dir)
    report = ExportReport(
        out_dir=str(out_dir),
        source=describe_model_dir(model_dir),
        quantize=quantize,
        opset=opset,
        int8=asdict(int8) if int8 else None,
        inputs=list(names),
        checked_shapes=[list(b["input_ids"].shape) for b in batches],
    )

    # 2. the fp32 graph (fused where that keeps the logits), checked against PyTorch; 3. int8, measured
    _write_graph(model, names, batches, reference, out_dir, opset, optimize, tolerance, int8, report)
    # 4. what a model directory needs beside the graph, the probes, and how it was made
    _write_export_directory(out_dir, model_dir, tokenizer, batches, reference, report, t0)
    return report


def _write_graph(model, names, batches, reference, out_dir: Path, opset, optimize, tolerance, int8, report) -> None:
    """`out_dir/model.onnx`: the fp32 graph checked against PyTorch (its difference in the report) and,
    with `int8` settings, quantised and measured the same way."""
    with tempfile.TemporaryDirectory(prefix="kqa-export-") as tmp:
        tmp = Path(tmp)
        fp32 = _export_fp32_graph(
            model, names, batches, reference, tmp, opset=opset, optimize=optimize, tolerance=tolerance, report=report
        )
        final = fp32
        if int8 is not None:
            final = tmp / "int8.onnx"
            quantize_int8(fp32, final, int8)
        report.max_abs_diff = (
            report.max_abs_diff_fp32
            if final is fp32
            else max_logit_difference(OnnxQuestionAnsweringModel(final, num_threads=1), reference, batches)
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, out_dir / ONNX_FILE)


def _probe_reference(model, tokenizer, model_dir: Path):
    """The graph's input names, the probe batches, and the PyTorch model's fp32 logits on them."""
    from kqa.prediction import load_settings

    if hasattr(model.backbone, "set_attn_implementation"):
        try:  # the plain attention graph: what ONNX Runtime's fusions recognise (same numbers as sdpa)
            model.backbone.set_attn_implementation("eager")
        except (ValueError, ImportError):
            pass
    names = _model_input_names(model, tokenizer)
    width = load_settings(model_dir).features.max_seq_length
    batches = _check_batches(model.config.vocab_size, names, width)
    with torch.no_grad():
        reference = [tuple(t.float() for t in _SpanGraph(model, names)(*b.values())) for b in batches]
    return names, batches, reference


def _export_fp32_graph(
    model, names, batches, reference, tmp: Path, *, opset: int, optimize: bool, tolerance: float, report: ExportReport
) -> Path:
    """torch.onnx.export, then ONNX Runtime's fusions where they keep the logits within `tolerance`;
    raises RuntimeError (nothing written) when even the plain graph does not."""
    config = model.config
    raw = tmp / "raw.onnx"
    dynamic = {n: {0: "batch", 1: "sequence"} for n in (*names, *OUTPUT_NAMES)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about Python branches on shapes (checked below)
        # The TorchScript exporter: its graph is the one ONNX Runtime's BERT fusions match.
        torch.onnx.export(
            _SpanGraph(model, names),
            tuple(batches[1].values()),
            str(raw),
            input_names=list(names),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    fp32 = raw
    if optimize and getattr(config, "model_type", None) in FUSABLE_MODEL_TYPES:
        fused = tmp / "fused.onnx"
        try:
            report.fused = _fuse(raw, fused, config)
            diff = max_logit_difference(OnnxQuestionAnsweringModel(fused, num_threads=1), reference, batches)
            if diff <= tolerance:
                fp32 = fused
            else:
                logger.warning(
                    "%s: the fused graph's logits differ by %.2g from PyTorch's; exporting the unfused graph",
                    report.source,
                    diff,
                )
                report.fused = {}
        except Exception as err:  # noqa: BLE001 - a fusion failure leaves the plain export usable
            logger.warning(
                "%s: ONNX Runtime's transformer fusions failed (%s); exporting the unfused graph", report.source, err
            )
            report.fused = {}
    report.max_abs_diff_fp32 = max_logit_difference(OnnxQuestionAnsweringModel(fp32, num_threads=1), reference, batches)
    if not report.max_abs_diff_fp32 <= tolerance:
        raise RuntimeError(
            f"{report.source}: the exported graph's logits differ by {report.max_abs_diff_fp32:.3g} "
            f"from the PyTorch model's (tolerance {tolerance}); not writing {report.out_dir}"
        )
    return fp32


def _write_export_directory(
    out_dir: Path, model_dir: Path, tokenizer, batches, reference, report: ExportReport, t0: float
) -> None:
    from kqa import __version__
    from kqa.modeling import KQA_CONFIG_FILE

    write_probes(out_dir / ONNX_PROBES_FILE, batches, reference)
    report.onnx_bytes = (out_dir / ONNX_FILE).stat().st_size
    tokenizer.save_pretrained(str(out_dir))
    for name in ("config.json", KQA_CONFIG_FILE):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
    report.seconds = time.perf_counter() - t0
    info = {**report.to_dict(), "kqa_version": __version__, "torch": torch.__version__}
    (out_dir / ONNX_EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
