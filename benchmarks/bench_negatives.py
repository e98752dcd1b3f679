"""How a saved model abstains: its predictions on a dev file with constructed negatives (`kqa make-negatives`).

    python benchmarks/bench_negatives.py --model outputs/run/best --data_file dev-neg.json \
        [--version_2_with_negative true] [--null_score_diff_threshold 0] --out abstention.json

Writes, for the answerable questions: EM/F1 (the official KorQuAD metric over them alone) and the share
answered "" (wrongly); for the unanswerable ones: the share answered "" (rightly). The post-processing
settings default to those saved with the model. Numbers in docs/results.md ("Negatives").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

from kqa.flags import parse_bool  # noqa: E402


def abstention_counts(examples, predictions: dict[str, str]) -> dict[str, float]:
    """EM/F1 over the answerable questions, and the share of each kind answered ""."""
    from kqa.metric import score_predictions

    impossible = [bool(v) for v in examples["is_impossible"]]
    answerable = examples.select([i for i, v in enumerate(impossible) if not v])
    negatives = [qid for qid, v in zip(examples["id"], impossible) if v]
    scores = score_predictions(answerable, {qid: predictions[qid] for qid in answerable["id"]})
    return {
        "answerable": len(answerable),
        "negatives": len(negatives),
        "answerable_exact_match": scores.exact_match,
        "answerable_f1": scores.f1,
        "answerable_answered_empty": sum(predictions[q] == "" for q in answerable["id"]) / max(len(answerable), 1),
        "negatives_answered_empty": sum(predictions[q] == "" for q in negatives) / max(len(negatives), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data_file", required=True, help="SQuAD 2.0 JSON (kqa make-negatives) or any data file")
    parser.add_argument("--version_2_with_negative", type=parse_bool, help="default: as saved with the model")
    parser.add_argument("--null_score_diff_threshold", type=float, help="default: as saved with the model")
    parser.add_argument("--output_dir", help="where the predictions go (default: beside --out)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON of counts to write")
    args = parser.parse_args(argv)

    from kqa.data import load_data_file
    from kqa.training.evaluation import evaluate_model

    overrides = {
        k: getattr(args, k)
        for k in ("version_2_with_negative", "null_score_diff_threshold")
        if getattr(args, k) is not None
    }
    output_dir = Path(args.output_dir or args.out.with_suffix(""))
    evaluation = evaluate_model(args.model, args.data_file, output_dir=output_dir, disable_tqdm=True, **overrides)
    predictions = json.loads(evaluation.predictions_file.read_text(encoding="utf-8"))
    examples, _ = load_data_file(args.data_file)
    counts = abstention_counts(examples, predictions)
    settings = {"model": args.model, "data_file": args.data_file, **overrides}
    print(json.dumps({**settings, **counts}, ensure_ascii=False, indent=1))
    common.write_json(args.out, machine=common.machine_info(), settings=settings, results=counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
