"""Benchmark the answer ranker (`kqa calibrate --open`, kqa.answer_ranking) against the default ranking of
retrieve-then-read, P(passage) × P(span | passage), on the shared dev sets.

Index: every distinct context of both dev sets (KorQuAD 1.0 sample, TyDi-GoldP Korean), hybrid, the
embedding model given. Each question is read over `--passages` passages with its document in the index and
with it removed (kqa.retrieval.open_calibration). For each dev set X the ranker is fitted on the *other*
set's readings (cross-fitting: no question is judged by a ranker fitted on it), with its default threshold;
a ranker fitted without the passages' null scores shows what that feature adds.

Per dev set and ranking: F1 over the in-index questions (an abstention scores 0 only in the "at the
threshold" rows), the share of answers taken from the gold document, the open-vs-given F1 gap (given: the
reader alone on the gold context) and the share of it closed; ECE of the best answer's confidence (in
index; in index and removed together); answer rate with the document in the index and abstention rate with
it removed, at the fitted threshold and at a sweep of thresholds.

    python benchmarks/bench_open_ranking.py --reader outputs/offline-e5-small/best --out open_ranking.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, machine_info, print_header, print_table, settings_from_args, write_json  # noqa: E402

from kqa.flags import parse_bool  # noqa: E402

THRESHOLDS = "0.05,0.1,0.15,0.2,0.3"
ANSWER_RATES = "0.9,0.95,0.98"  # thresholds set to answer these shares of the fit set's indexed questions


def load_dev_sets(data_dir: Path) -> dict[str, list[dict]]:
    from kqa.data import load_data_file

    files = sorted(f for f in data_dir.rglob("*.json") if "dev" in f.name.lower())
    if not files:
        raise SystemExit(f"no *dev*.json under {data_dir}")
    return {("korquad" if "korquad" in f.name.lower() else "tydi"): list(load_data_file(f)[0]) for f in files}


def best_answers(pipeline, readings, by: str) -> list:
    """The best answer of each reading under ranking `by` (None: none found), no threshold."""
    results = [pipeline.rank(r.example["question"], r.passages, r.answers, by=by) for r in readings]
    return [res.answers[0] if res.answers else None for res in results]


def ranking_row(name, ranking, readings, best, given_f1, threshold=None) -> dict:
    """Scores of one ranking over the in-index readings of one set (answers below `threshold` withheld)."""
    answered = [b is not None and (threshold is None or b.confidence >= threshold) for b in best]
    f1 = [r.correct(b)[1] if a else 0.0 for r, b, a in zip(readings, best, answered)]
    open_f1 = 100 * float(np.mean(f1))
    return {
        "set": name,
        "ranking": ranking,
        "answer rate": float(np.mean(answered)),
        "F1": open_f1,
        "from gold doc": float(np.mean([a and b.doc_id == r.doc_id for r, b, a in zip(readings, best, answered)])),
        "given F1": given_f1,
        "gap": given_f1 - open_f1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--embedding-model", default=str(REPO_ROOT / "models" / "e5-small"))
    parser.add_argument("--reader", default=str(REPO_ROOT / "outputs" / "offline-e5-small" / "best"))
    parser.add_argument("--passages", type=int, default=5, help="passages read per question")
    parser.add_argument(
        "--version-2-with-negative",
        type=parse_bool,
        help="the reader's null answer competes in each passage (default: as saved with the model); false reads a "
        "model trained with negatives for spans only, its null score still a ranker feature",
    )
    parser.add_argument("--thresholds", default=THRESHOLDS)
    parser.add_argument("--answer-rates", default=ANSWER_RATES)
    parser.add_argument("--limit", type=int, help="questions per set (a quick run)")
    parser.add_argument("--figures", type=Path, help="write reliability_open_<set>.png (cross-fitted) here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()
    from kqa.answer_ranking import ANSWER_FEATURES, fit_answer_ranker, threshold_for_answer_rate
    from kqa.calibration import expected_calibration_error
    from kqa.cli.calibrate import plot_reliability, read_dev_set
    from kqa.inference import QuestionAnswerer
    from kqa.retrieval import Embedder, RetrieveAndRead
    from kqa.retrieval.open_calibration import SETTINGS, dev_documents, dev_index, question_candidates, read_open

    machine, settings = machine_info(), settings_from_args(args)
    print_header(machine, settings)
    sets = {k: v[: args.limit] if args.limit else v for k, v in load_dev_sets(args.data_dir).items()}
    everything = [e for examples in sets.values() for e in examples]
    documents, doc_ids = dev_documents(everything)
    start = time.perf_counter()
    embedder = Embedder.from_pretrained(args.embedding_model)
    retriever = dev_index(documents, embedder)
    print(f"index: {len(documents)} documents, {len(retriever.passages)} passages, {time.perf_counter() - start:.0f} s")
    overrides = (
        {} if args.version_2_with_negative is None else {"version_2_with_negative": args.version_2_with_negative}
    )
    reader = QuestionAnswerer.from_pretrained(args.reader, **overrides)
    reader.answer_ranker = None  # read as without one; each set's ranker is fitted below
    pipeline = RetrieveAndRead(retriever, reader, passages=args.passages)

    start, readings, given, offset = time.perf_counter(), {}, {}, 0
    for name, examples in sets.items():
        ids = doc_ids[offset : offset + len(examples)]
        offset += len(examples)
        readings[name] = read_open(pipeline, examples, ids, args.passages)
        given[name] = 100 * float(np.mean(read_dev_set(reader, examples)[2]))
    print(f"read (gold contexts, and retrieved passages in both settings): {time.perf_counter() - start:.0f} s")

    rows, sweep, fitted = [], [], {}
    for name in sets:
        other = next((k for k in sets if k != name), name)
        ranker = fit_answer_ranker(
            question_candidates(pipeline, readings[other]),
            fit_on={"data": other, "embedding_model": embedder.name, "embedder_fingerprint": embedder.fingerprint},
        )
        fitted[name] = ranker.to_dict()
        # The fit set's own best answers: where a threshold for a target answer rate lies there.
        pipeline.answer_ranker = ranker
        fit_inside = [r for r in readings[other] if r.setting == SETTINGS[0]]
        for r in fit_inside:
            pipeline.score_answers(r.passages, r.answers)
        fit_confidence = [b.confidence if b else 0.0 for b in best_answers(pipeline, fit_inside, "confidence")]
        by_rate = {float(x): threshold_for_answer_rate(fit_confidence, float(x)) for x in args.answer_rates.split(",")}
        by_setting = {s: [r for r in readings[name] if r.setting == s] for s in SETTINGS}
        inside = by_setting[SETTINGS[0]]
        today = best_answers(pipeline, inside, "probability")
        rows.append(ranking_row(name, "P(passage) x P(span) (default)", inside, today, given[name]))
        first = len(rows) - 1
        # The same ranker without the passage's null score: what that feature adds, in the same run.
        without_null = ANSWER_FEATURES[: ANSWER_FEATURES.index("null_score")]
        pipeline.answer_ranker = fit_answer_ranker(
            question_candidates(pipeline, readings[other]), features=without_null
        )
        for r in inside:
            pipeline.score_answers(r.passages, r.answers)
        without = best_answers(pipeline, inside, "confidence")
        label = f"answer ranker without null score (fit on {other})"
        rows.append(ranking_row(name, label, inside, without, given[name]))
        pipeline.answer_ranker = ranker
        for r in readings[name]:
            pipeline.score_answers(r.passages, r.answers)
        best = {s: best_answers(pipeline, by_setting[s], "confidence") for s in SETTINGS}
        label = f"answer ranker (fit on {other})"
        rows.append(ranking_row(name, label, inside, best[SETTINGS[0]], given[name]))
        rows.append(
            ranking_row(
                name,
                f"{label}, threshold {ranker.score_threshold:.3f}",
                inside,
                best[SETTINGS[0]],
                given[name],
                ranker.score_threshold,
            )
        )
        confidence = {s: [b.confidence if b else 0.0 for b in best[s]] for s in SETTINGS}
        correct = {s: [r.correct(b)[0] if b else 0.0 for r, b in zip(by_setting[s], best[s])] for s in SETTINGS}
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            curves = {s: (confidence[s], correct[s]) for s in SETTINGS}
            title = f"{name}, best answers over retrieved passages (fit on {other})"
            plot_reliability(curves, args.figures / f"reliability_open_{name}.png", title)
        chosen = [(t, f"{rate:.0%} of {other}") for rate, t in by_rate.items()]
        for t, how in chosen + [(float(x), "-") for x in args.thresholds.split(",")]:
            sweep.append(
                {
                    "set": name,
                    "threshold": t,
                    "chosen to answer": how,
                    "answered (in index)": float(np.mean(np.array(confidence[SETTINGS[0]]) >= t)),
                    "abstained (removed)": float(np.mean(np.array(confidence[SETTINGS[1]]) < t)),
                    "ECE in index": expected_calibration_error(confidence[SETTINGS[0]], correct[SETTINGS[0]]),
                    "ECE in index + removed": expected_calibration_error(
                        confidence[SETTINGS[0]] + confidence[SETTINGS[1]], correct[SETTINGS[0]] + correct[SETTINGS[1]]
                    ),
                }
            )
        today_gap = rows[first]["gap"]
        for row in rows[first + 1 :]:
            row["gap closed"] = (today_gap - row["gap"]) / today_gap if today_gap else float("nan")
        pipeline.answer_ranker = None
        for r in readings[name] + readings[other]:  # back to no confidence for the next set's rankings
            for a in r.answers:
                a.confidence = None
    print_table(rows, [(k, k, "" if k in ("set", "ranking") else ".3f") for k in rows[-1]], "rankings (in index)")
    print_table(
        sweep,
        [(k, k, "" if k in ("set", "chosen to answer") else ".3f") for k in sweep[0]],
        "abstention and calibration",
    )
    write_json(args.out, machine=machine, settings=settings, rankings=rows, abstention=sweep, rankers=fitted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
