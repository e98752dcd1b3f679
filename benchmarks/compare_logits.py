"""Compare two folders of logits written by `ort_replay.py` (e.g. the same int8 export run on an AVX2-only
CPU and on an AVX-512 VNNI one), batch by batch: the largest logit difference, and in how many windows the
best start and the best end token are the same. Batches present in both folders are compared, so a
partial run of a slow (emulated) CPU can be checked against a whole one.

    python benchmarks/compare_logits.py /tmp/int8/logits-avx2/default /tmp/int8/logits-native/default
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from ort_replay import OUTPUT_NAMES  # noqa: E402  (one copy beside the emulated script)


def compare_batch(path_a: Path, path_b: Path) -> dict:
    with np.load(path_a, allow_pickle=False) as a, np.load(path_b, allow_pickle=False) as b:
        row = {"batch": f"{path_a.parent.name}/{path_a.name}", "windows": int(a["start_logits"].shape[0])}
        for name in OUTPUT_NAMES:
            x, y = a[name].astype(np.float64), b[name].astype(np.float64)
            if x.shape != y.shape:
                raise ValueError(f"{path_a} and {path_b}: {name} shapes differ ({x.shape} vs {y.shape})")
            both_masked = np.isneginf(x) & np.isneginf(y)  # padding positions may hold -inf in both
            row[f"{name}_max_abs_diff"] = float(np.abs(x - y)[~both_masked].max(initial=0.0))  # -inf on one side: inf
            row[f"{name}_same_argmax"] = int(np.sum(x.argmax(axis=1) == y.argmax(axis=1)))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logits", type=Path, help="a folder of logits (ort_replay.py --out)")
    parser.add_argument("reference", type=Path, help="the folder to compare with")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    shared = sorted(
        p.relative_to(args.logits)
        for p in args.logits.glob("*/*.npz")
        if (args.reference / p.relative_to(args.logits)).is_file()
    )
    if not shared:
        parser.error(f"no batch is in both {args.logits} and {args.reference}")
    only_one = len(list(args.logits.glob("*/*.npz"))) - len(shared)
    if only_one:
        print(f"{only_one} batches of {args.logits} have no counterpart in {args.reference}: not compared")
    rows = [compare_batch(args.logits / rel, args.reference / rel) for rel in shared]
    infos = {}
    for name, folder in (("logits", args.logits), ("reference", args.reference)):
        info_file = folder / "replay.json"
        infos[name] = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    windows = sum(r["windows"] for r in rows)
    summary = {
        "batches": len(rows),
        "batches_without_counterpart": only_one,
        "windows": windows,
        "max_abs_diff": max(max(r["start_logits_max_abs_diff"], r["end_logits_max_abs_diff"]) for r in rows),
        "same_start_argmax": sum(r["start_logits_same_argmax"] for r in rows),
        "same_end_argmax": sum(r["end_logits_same_argmax"] for r in rows),
        "logits_cpu_features": infos["logits"].get("cpu_features"),
        "reference_cpu_features": infos["reference"].get("cpu_features"),
    }
    print(
        f"{args.logits} ({'+'.join(summary['logits_cpu_features'] or ['?'])}) against {args.reference} "
        f"({'+'.join(summary['reference_cpu_features'] or ['?'])})"
    )
    columns = [("batch", "batch", ""), ("windows", "windows", "d")]
    for name in OUTPUT_NAMES:
        columns += [(f"{name}_max_abs_diff", f"{name} max |diff|", ".2e"), (f"{name}_same_argmax", "same argmax", "d")]
    common.print_table(rows, columns, title="logits of the same export on two CPUs")
    print(
        f"{windows} windows: max |diff| {summary['max_abs_diff']:.2e}; best start the same in "
        f"{summary['same_start_argmax']}, best end in {summary['same_end_argmax']}"
    )
    common.write_json(args.out, summary=summary, batches=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
