"""Inference runtimes and export (kqa.inference.runtimes, kqa.inference.export): torch, torch-int8,
onnx (fp32 and int8 exports), on tiny models.

`token_scoring_model` gives every context one span whose start and end tokens score MARK while all
others score 0, so every backend, quantised or not, must return exactly that span; a seeded
random-init BERT (real attention, padding) checks that the fp32 ONNX graph's scores match PyTorch's.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx backend needs requirements-serve.txt")
pytest.importorskip("onnx", reason="kqa export needs requirements-serve.txt")

from kqa.inference import QuestionAnswerer  # noqa: E402
from kqa.inference.export import Int8Settings, export_onnx  # noqa: E402
from kqa.inference.runtimes import (  # noqa: E402
    BACKENDS,
    DRIFT_MARGIN,
    ONNX_EXPORT_INFO_FILE,
    ONNX_FILE,
    ONNX_PROBES_FILE,
    OnnxQuestionAnsweringModel,
    cpu_features,
    load_model,
)
from kqa.testing import KOREAN_EXAMPLES, tiny_bert_config, token_scoring_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
MARK = 8.0
MARKED_SPANS = {"부산": ("부", "##산"), "영국": ("영", "##국"), "반포": ("반", "##포")}
EXPECTED = {"ko-1": "부산", "ko-2": "부산", "ko-3": "영국", "ko-4": "영국", "ko-5": "반포", "ko-6": "반포"}
QUESTIONS = [ex["question"] for ex in KOREAN_EXAMPLES]
CONTEXTS = [ex["context"] for ex in KOREAN_EXAMPLES]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def marked_dir(tmp_path_factory, tokenizer):
    model = token_scoring_model(
        tokenizer, {s: MARK for s, _ in MARKED_SPANS.values()}, {e: MARK for _, e in MARKED_SPANS.values()}
    )
    return model.save_pretrained(tmp_path_factory.mktemp("marked") / "model", tokenizer=tokenizer, kqa_config=SETTINGS)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory, tokenizer):
    from kqa.modeling import QuestionAnsweringModel

    torch.manual_seed(0)
    model = QuestionAnsweringModel.from_config(tiny_bert_config(len(tokenizer)))
    return model.save_pretrained(tmp_path_factory.mktemp("random") / "model", tokenizer=tokenizer, kqa_config=SETTINGS)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, marked_dir, random_dir):
    """(model, quantisation) → (export directory, ExportReport)."""
    out = tmp_path_factory.mktemp("exports")
    made = {}
    for name, source in (("marked", marked_dir), ("random", random_dir)):
        for quantize in (None, "int8"):
            directory = out / f"{name}-{quantize or 'fp32'}"
            made[name, quantize] = (directory, export_onnx(source, directory, quantize=quantize))
    return made


def _spans(answers):
    return [(a.text, a.start, a.end) for a in answers]


def test_the_export_directory_holds_what_a_model_directory_needs(exports, marked_dir):
    directory, report = exports["marked", None]
    for name in (
        ONNX_FILE,
        "config.json",
        "kqa_config.json",
        ONNX_EXPORT_INFO_FILE,
        ONNX_PROBES_FILE,
        "tokenizer.json",
    ):
        assert (directory / name).is_file(), name
    assert (directory / "kqa_config.json").read_text() == (marked_dir / "kqa_config.json").read_text()
    assert not list(directory.glob("model*.safetensors"))  # no PyTorch weights: only the graph
    info = json.loads((directory / ONNX_EXPORT_INFO_FILE).read_text())
    assert info["quantize"] is None and info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert report.max_abs_diff_fp32 < 1e-4 and report.max_abs_diff == report.max_abs_diff_fp32


def test_the_onnx_graph_has_dynamic_batch_and_sequence_axes(exports):
    import onnx

    graph = onnx.load(str(exports["random", None][0] / ONNX_FILE)).graph
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims), value.name
    assert [o.name for o in graph.output] == ["start_logits", "end_logits"]


def test_the_fp32_export_matches_the_torch_model(exports, random_dir):
    directory, report = exports["random", None]
    assert report.max_abs_diff_fp32 < 1e-4
    assert report.fused.get("Attention", 0) == 2  # ONNX Runtime's BERT fusions applied (and checked)
    torch_qa = QuestionAnswerer.from_pretrained(random_dir, device="cpu")
    onnx_qa = QuestionAnswerer.from_pretrained(directory)
    assert onnx_qa.backend == "onnx"
    expected = torch_qa(QUESTIONS, CONTEXTS, top_k=3)
    got = onnx_qa(QUESTIONS, CONTEXTS, top_k=3)
    for e, g in zip(expected, got):
        assert [a.score for a in g] == pytest.approx([a.score for a in e], abs=1e-4)
        if e[0].score - e[1].score > 1e-3:
            assert _spans(g[:1]) == _spans(e[:1])


def test_the_int8_export_reports_its_difference(exports):
    _, fp32 = exports["random", None]
    _, int8 = exports["random", "int8"]
    assert int8.quantize == "int8" and int8.max_abs_diff_fp32 == fp32.max_abs_diff_fp32
    assert 0 < int8.max_abs_diff < 1.0
    assert int8.onnx_bytes < fp32.onnx_bytes


@pytest.mark.parametrize("backend", ["torch", "torch-int8", "onnx", "onnx-int8", "torch-bf16"])
def test_every_backend_gives_the_marked_spans(backend, marked_dir, exports):
    if backend.startswith("onnx"):
        source = exports["marked", "int8" if backend == "onnx-int8" else None][0]
        qa = QuestionAnswerer.from_pretrained(source, backend="onnx")
    elif backend == "torch-bf16":
        qa = QuestionAnswerer.from_pretrained(marked_dir, device="cpu", dtype=torch.bfloat16)
        assert qa.model.dtype == torch.bfloat16
    else:
        qa = QuestionAnswerer.from_pretrained(marked_dir, backend=backend, device="cpu")
    answers = qa(QUESTIONS, CONTEXTS)
    expected = []
    for ex in KOREAN_EXAMPLES:
        start = ex["context"].index(EXPECTED[ex["id"]])
        expected.append((EXPECTED[ex["id"]], start, start + 2))
    assert _spans(answers) == expected
    if backend == "onnx-int8":
        # A score is a start plus an end logit: within twice the logit difference this CPU measured on the
        # export's probes (which hold the marked tokens), and that difference within the export's bound.
        drift = qa.model.drift
        assert drift is not None and not drift.drifted, drift
        tolerance = 2 * drift.max_abs_diff + 1e-4
    else:
        tolerance = {"torch": 1e-4, "onnx": 1e-4}.get(backend, 0.2)
    assert [a.score for a in answers] == pytest.approx([2 * MARK] * len(answers), abs=tolerance)


def test_int8_answers_keep_the_fp32_spans_and_ranks(exports, random_dir):
    """Random weights, real attention: every int8 score is within twice the drift bound of its fp32
    score, and answers whose fp32 scores are further apart than that stay in the same order."""
    torch_qa = QuestionAnswerer.from_pretrained(random_dir, device="cpu")
    int8_qa = QuestionAnswerer.from_pretrained(exports["random", "int8"][0])
    bound = 2 * int8_qa.model.drift.bound
    expected = torch_qa(QUESTIONS, CONTEXTS, top_k=5)
    got = int8_qa(QUESTIONS, CONTEXTS, top_k=20)
    for want, have in zip(expected, got):
        scores = {(a.start, a.end): a.score for a in have}
        for answer in want:
            assert scores[answer.start, answer.end] == pytest.approx(answer.score, abs=bound)
        ranked = [(a.start, a.end) for a in have]
        for first, second in zip(want, want[1:]):
            if first.score - second.score > 2 * bound:
                assert ranked.index((first.start, first.end)) < ranked.index((second.start, second.end))


def test_the_int8_export_keeps_probes_and_checks_them_at_load(exports):
    directory, report = exports["marked", "int8"]
    info = json.loads((directory / ONNX_EXPORT_INFO_FILE).read_text())
    assert info["int8"] == {
        "weight_type": "int8",
        "per_channel": True,
        "reduce_range": True,
        "span_head_fp32": True,
        "keep_fp32": ["ffn_out"],
    }
    assert info["cpu"] == cpu_features() and "AVX2" in info["cpu"]
    model = load_model(directory)
    assert model.drift.export_max_abs_diff == report.max_abs_diff
    assert model.drift.max_abs_diff <= model.drift.bound
    assert load_model(exports["marked", None][0]).drift is None  # fp32: exact on every CPU, nothing to check
    assert load_model(directory, int8_drift="ignore").drift is None


def _drifted_copy(directory: Path, tmp_path: Path, shift: float) -> Path:
    """The export with its kept fp32 probe logits moved by `shift`: as if this CPU's int8 kernels gave
    other logits than the exporting CPU's did."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "drifted"
    shutil.copytree(directory, copy)
    tensors = load_file(str(copy / ONNX_PROBES_FILE))
    save_file({k: v + shift if k.endswith("_logits") else v for k, v in tensors.items()}, str(copy / ONNX_PROBES_FILE))
    return copy


def test_an_int8_export_that_drifts_here_is_named_at_load(exports, tmp_path, caplog):
    directory = _drifted_copy(exports["marked", "int8"][0], tmp_path, shift=1.0)
    with caplog.at_level("WARNING", logger="kqa.inference.runtimes"):
        qa = QuestionAnswerer.from_pretrained(directory)
    assert qa.model.drift.drifted and qa.model.drift.max_abs_diff == pytest.approx(1.0, abs=0.01)
    assert "differ from the fp32 model's by 1" in caplog.text and "fp32 export" in caplog.text
    with pytest.raises(ValueError, match=r"drifted: this int8 export's logits differ .* int8_drift='warn'"):
        QuestionAnswerer.from_pretrained(directory, int8_drift="error")
    assert QuestionAnswerer.from_pretrained(directory, int8_drift="ignore").model.drift is None
    with pytest.raises(ValueError, match="int8_drift must be one of warn, error, ignore"):
        QuestionAnswerer.from_pretrained(directory, int8_drift="maybe")
    # Within the bound: no warning.
    caplog.clear()
    small = _drifted_copy(exports["marked", "int8"][0], tmp_path / "small", shift=DRIFT_MARGIN / 2)
    with caplog.at_level("WARNING", logger="kqa.inference.runtimes"):
        assert not QuestionAnswerer.from_pretrained(small).model.drift.drifted
    assert "differ from the fp32" not in caplog.text


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"weight_type": "uint8", "reduce_range": False},
        {"span_head_fp32": False, "keep_fp32": ()},
        {"keep_fp32": ("attention", "ffn_in")},
    ],
)
def test_int8_settings_reach_the_graph(settings, random_dir, tmp_path):
    import onnx

    report = export_onnx(random_dir, tmp_path / "e", quantize="int8", int8=Int8Settings(**settings))
    expected = {**asdict(Int8Settings()), **settings}
    assert report.int8 == {**expected, "keep_fp32": tuple(expected["keep_fp32"])}
    graph = onnx.load(str(tmp_path / "e" / ONNX_FILE)).graph
    integer_ops = {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}

    def quantized(pattern: str, exclude: str = "\0") -> bool:  # some node of these layers runs in int8
        ops = {n.op_type for n in graph.node if pattern in n.name and exclude not in n.name}
        assert ops, pattern
        return bool(ops & integer_ops)

    keep = set(expected["keep_fp32"])
    assert quantized("/qa_outputs/") == (not expected["span_head_fp32"])
    assert quantized("/intermediate/dense/") == ("ffn_in" not in keep)
    assert quantized("/output/dense/", exclude="/attention/") == ("ffn_out" not in keep)
    assert quantized("/attention/output/dense/") == ("attention_output" not in keep)
    fused_attention = {n.op_type for n in graph.node if n.op_type in ("Attention", "QAttention")}
    assert fused_attention == ({"Attention"} if "attention" in keep else {"QAttention"})
    weights = {i.data_type for i in graph.initializer if i.name.endswith("_quantized")}
    wanted = onnx.TensorProto.INT8 if expected["weight_type"] == "int8" else onnx.TensorProto.UINT8
    assert weights == {wanted}, weights


def test_bad_int8_settings_are_clear_errors(marked_dir, tmp_path):
    with pytest.raises(ValueError, match="int8 weight_type must be one of uint8, int8, got 'int4'"):
        Int8Settings(weight_type="int4")
    with pytest.raises(ValueError, match=r"unknown layer kinds \['mlp'\]; choose from attention, attention_output"):
        Int8Settings(keep_fp32=("mlp",))
    with pytest.raises(ValueError, match="int8 settings are for quantize='int8'"):
        export_onnx(marked_dir, tmp_path / "e", int8=Int8Settings())


def test_torch_int8_quantises_every_encoder_linear_layer(marked_dir):
    qa = QuestionAnswerer.from_pretrained(marked_dir, backend="torch-int8")
    assert qa.backend == "torch-int8" and qa.device.type == "cpu"
    kinds = {name: type(m).__module__ for name, m in qa.model.named_modules() if type(m).__name__ == "Linear"}
    encoder = [k for n, k in kinds.items() if not n.startswith("qa_outputs")]
    assert encoder and all("quantized.dynamic" in k for k in encoder), kinds
    assert kinds["qa_outputs"] == "torch.nn.modules.linear"  # the span head stays fp32
    # Full 8-bit activations (the version-4 call path quantises them to 7 bits).
    assert all(
        m.version == 3
        for n, m in qa.model.named_modules()
        if type(m).__name__ == "Linear" and not n.startswith("qa_outputs")
    )


def test_bf16_logits_come_back_float32(marked_dir):
    import datasets

    from kqa.dataloaders import QACollator, make_eval_dataloader
    from kqa.features import prepare_eval_features
    from kqa.prediction import predict_logits

    qa = QuestionAnswerer.from_pretrained(marked_dir, device="cpu", dtype="bfloat16")
    examples = datasets.Dataset.from_list(KOREAN_EXAMPLES[:2])
    features, _ = prepare_eval_features(examples, qa.tokenizer, qa.settings.features, cache=False)
    loader = make_eval_dataloader(features, QACollator.from_tokenizer(qa.tokenizer), 4)
    logits = predict_logits(qa.model, loader, qa.settings.features.max_seq_length, disable_tqdm=True)
    assert logits.start.dtype == logits.end.dtype == np.float32
    assert np.isfinite(logits.start).all()


def test_the_onnx_model_computes_the_loss_like_the_torch_model(exports, random_dir):
    from kqa.modeling import QuestionAnsweringModel

    onnx_model = load_model(exports["random", None][0])
    torch_model = QuestionAnsweringModel.from_pretrained(random_dir).eval()
    ids = torch.randint(5, 100, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 12:] = 0
    labels = {"start_positions": torch.tensor([3, 0, 5]), "end_positions": torch.tensor([4, 0, 7])}
    with torch.no_grad():
        expected = torch_model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), **labels)
    got = onnx_model(input_ids=ids, attention_mask=mask, **labels)  # token_type_ids default to zeros
    assert got.start_logits.dtype == torch.float32 and got.start_logits.shape == (3, 20)
    assert float(got.loss) == pytest.approx(float(expected.loss), abs=1e-4)


def _long_context() -> tuple[str, int]:
    pieces = [ex["context"] for ex in KOREAN_EXAMPLES[2:]] * 4
    before = " ".join(pieces[:8]) + " "
    context = before + KOREAN_EXAMPLES[0]["context"] + "".join(" " + p for p in pieces[8:])
    return context, len(before) + KOREAN_EXAMPLES[0]["context"].index("부산")


def test_all_windows_go_through_the_session_in_batches(tmp_path, tokenizer):
    """Only 부산 is marked; it sits in a later window of a long context."""
    model = token_scoring_model(tokenizer, {"부": MARK}, {"##산": MARK})
    export_onnx(model.save_pretrained(tmp_path / "busan", tokenizer=tokenizer, kqa_config=SETTINGS), tmp_path / "onnx")
    qa = QuestionAnswerer.from_pretrained(tmp_path / "onnx", batch_size=4)
    calls = []
    run = qa.model.session.run

    def recording_run(names, feeds):
        calls.append(len(feeds["input_ids"]))
        return run(names, feeds)

    qa.model.session = type("Recorder", (), {"run": staticmethod(recording_run)})()
    context, start = _long_context()
    answers = qa([KOREAN_EXAMPLES[0]["question"]] * 2, context)
    assert all(_spans([a]) == [("부산", start, start + 2)] for a in answers)
    windows = sum(calls)
    assert windows >= 2 * 5  # several windows per question, both questions
    assert calls == [4] * (windows // 4) + ([windows % 4] if windows % 4 else [])


def test_bad_backend_names_and_options_are_clear_errors(marked_dir, exports):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose one of torch, torch-int8, onnx"):
        QuestionAnswerer.from_pretrained(marked_dir, backend="tensorrt")
    with pytest.raises(ValueError, match="takes no dtype"):
        QuestionAnswerer.from_pretrained(exports["marked", None][0], dtype=torch.float16)
    with pytest.raises(ValueError, match="takes no dtype"):
        QuestionAnswerer.from_pretrained(marked_dir, backend="torch-int8", dtype="bf16")
    with pytest.raises(ValueError, match="unknown dtype"):
        QuestionAnswerer.from_pretrained(marked_dir, dtype="float8")
    with pytest.raises(ValueError, match="runs on the CPU"):
        QuestionAnswerer.from_pretrained(marked_dir, backend="torch-int8", device="cuda")
    with pytest.raises(FileNotFoundError, match="no model.onnx; make one with `kqa export"):
        QuestionAnswerer.from_pretrained(marked_dir, backend="onnx")
    with pytest.raises(FileNotFoundError, match="ONNX export only"):
        QuestionAnswerer.from_pretrained(exports["marked", None][0], backend="torch")
    assert set(BACKENDS) == {"torch", "torch-int8", "onnx"}


def test_exporting_what_is_not_a_model_is_a_clear_error(tmp_path, exports, marked_dir):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json; not a saved model directory"):
        export_onnx(tmp_path / "notes", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="is neither an existing directory nor a hub id"):
        export_onnx(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="already an ONNX export"):
        export_onnx(exports["marked", None][0], tmp_path / "out")
    with pytest.raises(ValueError, match="unknown quantisation"):
        export_onnx(marked_dir, tmp_path / "out", quantize="int4")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an empty directory"):
        export_onnx(marked_dir, tmp_path / "busy")
    assert not (tmp_path / "out").exists()


def _kqa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kqa", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_kqa_export_and_predict_on_the_export(tmp_path, marked_dir):
    out = tmp_path / "onnx-int8"
    proc = _kqa(
        "export", "--model", str(marked_dir), "--format", "onnx", "--quantize", "int8", "--output_dir", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "max |logit difference|" in proc.stderr and (out / ONNX_FILE).is_file()
    assert "(int8 weights, 7-bit; float: ffn_out and the span head), measured on a CPU with AVX2" in proc.stderr
    ex = KOREAN_EXAMPLES[0]
    proc = _kqa("predict", "--model", str(out), "--question", ex["question"], "--context", ex["context"])
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert (answer["text"], answer["start"]) == ("부산", ex["context"].index("부산"))
    proc = _kqa(
        "predict",
        "--model",
        str(marked_dir),
        "--backend",
        "torch-int8",
        "--question",
        ex["question"],
        "--context",
        ex["context"],
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text"] == "부산"


def test_kqa_export_of_a_non_model_directory_fails_cleanly(tmp_path):
    proc = _kqa("export", "--model", str(tmp_path), "--format", "onnx", "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "kqa export: error:" in proc.stderr and "not a saved model directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_onnx_threads_default_to_torchs(exports):
    model = load_model(exports["marked", None][0])
    assert isinstance(model, OnnxQuestionAnsweringModel)
    assert model.num_threads == torch.get_num_threads()
    assert load_model(exports["marked", None][0], num_threads=1).num_threads == 1
    assert math.isfinite(float(model(input_ids=torch.tensor([[2, 7, 3]])).start_logits.sum()))
