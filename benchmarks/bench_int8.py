"""Which int8 settings keep a model's answers on every kind of x86-64 CPU: EM/F1 of int8 ONNX exports
made with different `kqa.inference.export.Int8Settings`, against the fp32 export, on the dev sets, with the CPU
features this process runs on (numpy's CPUID detection, so an emulated CPU reports its own).

ONNX Runtime picks its int8 kernels by CPU: without VNNI (AVX2, early AVX-512) it sums pairs of
uint8 × int8 products in 16 bits, which saturates for large products; with VNNI it does not. So run
this once natively and once on an AVX2-only CPU, e.g. emulated by Debian's qemu-user (slow: time
nothing there, `--runs 0`):

    python benchmarks/bench_int8.py --model outputs/offline-e5-small/best --exports /tmp/int8 --out vnni.json
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/bench_int8.py --model outputs/offline-e5-small/best \\
        --exports /tmp/int8 --runs 0 --out avx2.json

`--exports DIR` keeps the exports, so the second run measures the very same files. With `--runs N`
every variant also answers N single questions with a short and with a long context (p50 ms, against
the fp32 export in the same run). `--smoke` runs a tiny random model through everything.

Under emulation even the dev sets take hours (tokenising and importing torch included), so the only
CPU-dependent part — ONNX Runtime computing logits — can run there alone (`ort_replay.py`), between
two native runs of this script:

    python benchmarks/bench_int8.py --model M --exports /tmp/int8 --variants default --runs 0 \
        --record-feeds /tmp/int8/feeds                      # saves every batch the dev sets give the model
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/ort_replay.py \
        --onnx /tmp/int8/default/model.onnx --feeds /tmp/int8/feeds --out /tmp/int8/logits-avx2/default
    python benchmarks/bench_int8.py --model M --exports /tmp/int8 --variants default --runs 0 \
        --feeds /tmp/int8/feeds --replay-logits /tmp/int8/logits-avx2   # decodes and scores those logits
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402
import numpy as np  # noqa: E402
from bench_inference import accuracy, build_random_model, dev_sets, question_pools  # noqa: E402

# name → Int8Settings keyword arguments; "fp32" is the reference export.
VARIANTS = {
    "fp32": None,
    "default": {},  # Int8Settings(): 7-bit int8 weights, the feed-forward down-projections in float
    "u8s8": {"weight_type": "int8", "reduce_range": False, "keep_fp32": []},
    "u8u8": {"weight_type": "uint8", "reduce_range": False, "keep_fp32": []},
    "u8s8-reduce-range": {"weight_type": "int8", "reduce_range": True, "keep_fp32": []},
    "u8s8-head-int8": {"weight_type": "int8", "reduce_range": False, "keep_fp32": [], "span_head_fp32": False},
    "rr-fp32-attention": {"reduce_range": True, "keep_fp32": ["attention"]},
    "rr-fp32-attention-output": {"reduce_range": True, "keep_fp32": ["attention_output"]},
    "rr-fp32-ffn-in": {"reduce_range": True, "keep_fp32": ["ffn_in"]},
    # PyTorch's dynamic int8 (the torch-int8 backend, made at load time from the PyTorch weights).
    "torch-int8": None,
}


def make_exports(model_dir: Path, names: list[str], root: Path) -> dict[str, Path]:
    """Every variant's export under `root/NAME`, made unless an earlier run left it there."""
    from kqa.inference.export import Int8Settings, export_onnx
    from kqa.inference.runtimes import ONNX_EXPORT_INFO_FILE

    made = {}
    for name in names:
        if name == "torch-int8":
            made[name] = model_dir
            continue
        directory = root / name
        if not (directory / ONNX_EXPORT_INFO_FILE).is_file():
            options = VARIANTS[name]
            export_onnx(
                model_dir,
                directory,
                quantize=None if options is None else "int8",
                int8=None if options is None else Int8Settings(**options),
            )
        made[name] = directory
    return made


def feeds_key(feeds: dict[str, np.ndarray]) -> str:
    """A batch's identity: the digest of its arrays (names, shapes, dtypes, contents)."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class RecordingSession:
    """An ONNX Runtime session that also saves every batch it runs, as `FOLDER/<set>/<n>.npz`."""

    def __init__(self, session, folder: Path):
        self.session, self.folder, self.set_name, self.count = session, folder, "batches", 0

    def run(self, output_names, feeds):
        target = self.folder / self.set_name / f"{self.count:05d}.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target, **feeds)
        self.count += 1
        return self.session.run(output_names, feeds)


class ReplaySession:
    """Answers every batch with the logits `ort_replay.py` computed for it (on another CPU), found by the
    batch's contents: the decoding and scoring then run here exactly as for a live session."""

    def __init__(self, feeds_dir: Path, logits_dir: Path):
        self.logits: dict[str, Path] = {}
        for path in sorted(feeds_dir.glob("*/*.npz")):
            with np.load(path, allow_pickle=False) as recorded:
                key = feeds_key({name: recorded[name] for name in recorded.files})
            self.logits[key] = logits_dir / path.parent.name / path.name
        missing = [p for p in self.logits.values() if not p.is_file()]
        if not self.logits or missing:
            raise FileNotFoundError(
                f"{logits_dir}: logits missing for {len(missing)} of {len(self.logits)} recorded batches "
                f"(run ort_replay.py over {feeds_dir} to the end)"
            )
        self.info = json.loads((logits_dir / "replay.json").read_text(encoding="utf-8"))

    def run(self, output_names, feeds):
        key = feeds_key(feeds)
        if key not in self.logits:
            raise KeyError("a batch that was not recorded: record the feeds with the same data and settings")
        with np.load(self.logits[key], allow_pickle=False) as saved:
            return [saved[name] for name in output_names]


def scored_sets(qa, sets: dict, recorder: RecordingSession | None) -> dict[str, dict]:
    """EM/F1 on every set (bench_inference.accuracy), telling a recorder which set it sees."""
    scores = {}
    for name, examples in sets.items():
        if recorder is not None:
            recorder.set_name, recorder.count = name, 0
        scores.update(accuracy(qa, {name: examples}))
    return scores


def median_ms(qa, pool: list[tuple], runs: int) -> float:
    qa(*pool[0])  # warm-up
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        qa(*pool[i % len(pool)])
        times.append((time.perf_counter() - t0) * 1e3)
    return common.percentile(times, 50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a saved kqa model directory")
    parser.add_argument("--data-dir", type=Path, default=common.default_data_dir())
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="exports to compare; fp32 (the reference) is always measured first",
    )
    parser.add_argument(
        "--exports",
        type=Path,
        default=None,
        help="keep (and reuse) the exports in this folder; default: a temporary one",
    )
    parser.add_argument("--runs", type=int, default=20, help="timed single questions per context kind (0: none)")
    parser.add_argument("--max-eval-examples", type=int, default=None, help="first N questions of every dev file")
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="take the fp32 row from this earlier result (JSON) instead of measuring it again: "
        "for slow emulated runs (the fp32 export computes the same logits to ~1e-5 on any CPU)",
    )
    parser.add_argument(
        "--record-feeds",
        type=Path,
        default=None,
        help="save every batch the dev sets give the fp32 export here (for ort_replay.py on another CPU)",
    )
    parser.add_argument("--feeds", type=Path, default=None, help="the batches --record-feeds saved")
    parser.add_argument(
        "--replay-logits",
        type=Path,
        default=None,
        help="score the logits ort_replay.py computed (REPLAY/<variant>/) instead of running the int8 exports "
        "here; needs --feeds",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny random model: checks the script runs")
    common.add_bert_shape_arguments(parser, vocab_size=8000, what="random model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab_size, args.hidden_size, args.layers, args.heads, args.intermediate_size = 300, 32, 1, 2, 64
        args.runs = min(args.runs, 2)
        args.max_eval_examples = args.max_eval_examples or 4
    if args.replay_logits is not None and args.feeds is None:
        parser.error("--replay-logits needs --feeds (the batches the logits were computed for)")
    if args.replay_logits is not None:
        args.runs = 0  # the logits were computed elsewhere: nothing here to time
    names = ["fp32"] + [n for n in args.variants if n != "fp32"]
    reference_row = None
    if args.reference is not None:
        reference_row = json.loads(args.reference.read_text(encoding="utf-8"))["results"][0]
        if reference_row["variant"] != "fp32":
            parser.error(f"--reference {args.reference}: its first row is not the fp32 export")
        reference_row = {**reference_row, "variant": "fp32 (from --reference)"}
        names = names[1:]

    import datasets
    import transformers

    from kqa.inference import QuestionAnswerer
    from kqa.inference.runtimes import measure_int8_drift, read_export_info

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    machine_features = common.machine_info()["cpu_features"]
    with tempfile.TemporaryDirectory(prefix="kqa-bench-int8-") as tmp:
        root = args.exports or Path(tmp)
        model_dir = args.model or build_random_model(args, Path(tmp))
        t0 = time.perf_counter()
        exports = make_exports(model_dir, names, root)
        export_s = time.perf_counter() - t0
        sets = dev_sets(args.data_dir, args.max_eval_examples)
        pools = question_pools(args.data_dir, (150, 260), (2000, 4000)) if args.runs else {}
        rows = [reference_row] if reference_row else []
        for name in names:
            backend = "torch-int8" if name == "torch-int8" else "onnx"
            qa = QuestionAnswerer.from_pretrained(exports[name], backend=backend, int8_drift="ignore")
            drift = (
                measure_int8_drift(qa.model, exports[name], read_export_info(exports[name]))
                if backend == "onnx"
                else None
            )
            recorder, logits_cpu = None, machine_features
            if args.record_feeds is not None and name == "fp32":
                recorder = qa.model.session = RecordingSession(qa.model.session, args.record_feeds)
            if args.replay_logits is not None and name not in ("fp32", "torch-int8"):
                replay = qa.model.session = ReplaySession(args.feeds, args.replay_logits / name)
                logits_cpu, drift = replay.info["cpu_features"], None  # the probes ran here, not there
            row = {
                "variant": name,
                "settings": VARIANTS[name],
                "logits_cpu_features": logits_cpu,
                "probe_diff_here": drift.max_abs_diff if drift else None,
                "probe_diff_at_export": drift.export_max_abs_diff if drift else None,
                "drifted": drift.drifted if drift else None,
                "accuracy": scored_sets(qa, sets, recorder),
            }
            for set_name, scores in row["accuracy"].items():
                row[f"{set_name}_em"], row[f"{set_name}_f1"] = scores["em"], scores["f1"]
            for kind, pool in pools.items():
                row[f"{kind}_p50_ms"] = median_ms(qa, pool, args.runs)
            rows.append(row)
            del qa

    reference = rows[0]
    for row in rows:
        for set_name in sets:
            row[f"{set_name}_f1_delta"] = row[f"{set_name}_f1"] - reference[f"{set_name}_f1"]
            row[f"{set_name}_em_delta"] = row[f"{set_name}_em"] - reference[f"{set_name}_em"]
        for kind in pools:
            row[f"{kind}_speedup"] = reference[f"{kind}_p50_ms"] / row[f"{kind}_p50_ms"]

    machine = {**common.machine_info(), "onnxruntime": common._version("onnxruntime")}
    common.print_header(machine, common.settings_from_args(args))
    print(f"model: {model_dir}; exports in {export_s:.1f} s under {root}")
    print(f"CPU features seen by this process: {', '.join(machine['cpu_features']) or 'none of ' + 'AVX2…'}")
    columns = [("variant", "variant", "")]
    for set_name in sets:
        columns += [
            (f"{set_name}_em", f"{set_name} EM", ".2f"),
            (f"{set_name}_f1", "F1", ".2f"),
            (f"{set_name}_f1_delta", "dF1", "+.2f"),
        ]
    columns += [("probe_diff_here", "probe |dlogit| here", ".3f"), ("probe_diff_at_export", "at export", ".3f")]
    if args.replay_logits is not None:
        columns += [("logits_cpu", "logits computed with", "")]
        for row in rows:
            row["logits_cpu"] = "+".join(row.get("logits_cpu_features") or []) or "?"
    for kind in pools:
        columns += [(f"{kind}_p50_ms", f"{kind} p50 ms", ".1f"), (f"{kind}_speedup", "x fp32", ".2f")]
    common.print_table(rows, columns, title="int8 exports against the fp32 export (same run, same CPU)")
    common.write_json(args.out, machine=machine, settings=common.settings_from_args(args), results=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
