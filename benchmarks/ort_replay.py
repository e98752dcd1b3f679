"""Run an ONNX export over recorded input batches and save its logits: the only part of answering whose
numbers depend on the CPU (ONNX Runtime picks its int8 kernels by CPU features), in a process that imports
numpy and onnxruntime only — cheap enough to run under an emulated CPU, where importing torch and
tokenising alone take minutes.

    # 1. natively: record the batches the dev sets give the model (bench_int8.py --record-feeds)
    # 2. on the other CPU (here an emulated AVX2-only one):
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/ort_replay.py \\
        --onnx /tmp/int8/exports/default/model.onnx --feeds /tmp/int8/feeds --out /tmp/int8/logits-avx2/default
    # 3. natively: decode and score those logits (bench_int8.py --replay-logits /tmp/int8/logits-avx2)

Every batch file `FEEDS/<set>/<n>.npz` (input arrays) gives `OUT/<set>/<n>.npz` (start_logits,
end_logits); `OUT/replay.json` names the CPU features the logits were computed with. Batches already
done are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

OUTPUT_NAMES = ("start_logits", "end_logits")  # kqa.inference.runtimes.OUTPUT_NAMES (no kqa import here)
CPU_FEATURES = ("AVX2", "AVX512F", "AVX512BW", "AVX512VNNI", "AVX512BF16", "AVX512FP16")  # …INT8_CPU_FEATURES


def cpu_features() -> list[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as found
    return [name for name in CPU_FEATURES if found.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="an export's model.onnx")
    parser.add_argument("--feeds", type=Path, required=True, help="recorded batches (bench_int8.py --record-feeds)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the logits")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--limit", type=int, default=None, help="the first N batches only (for a slow emulated CPU)")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(args.onnx), options, providers=["CPUExecutionProvider"])
    batches = sorted(args.feeds.glob("*/*.npz"))[: args.limit]
    if not batches:
        parser.error(f"--feeds {args.feeds}: no recorded batches (<set>/<n>.npz)")
    args.out.mkdir(parents=True, exist_ok=True)
    info = {
        "onnx": str(args.onnx),
        "cpu_features": cpu_features(),
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "batches": len(batches),
    }
    (args.out / "replay.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(f"{len(batches)} batches; CPU features seen by this process: {', '.join(info['cpu_features'])}")
    t0 = time.perf_counter()
    for i, path in enumerate(batches):
        target = args.out / path.parent.name / path.name
        if target.is_file():
            continue
        with np.load(path, allow_pickle=False) as recorded:
            feeds = {name: recorded[name] for name in recorded.files}
        start, end = session.run(list(OUTPUT_NAMES), feeds)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial.npz")
        np.savez(partial, start_logits=start, end_logits=end)
        partial.rename(target)  # a killed run never leaves a half-written batch behind
        print(f"[{i + 1}/{len(batches)}] {path.parent.name}/{path.name} {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
