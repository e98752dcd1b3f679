"""Benchmark calibrated confidence and abstention over documents (docs/retrieval.md, docs/results.md).

Index: every distinct context of the shared dev sets (KorQuAD 1.0 sample, TyDi-GoldP Korean), hybrid
retrieval (the default). Reader: `--reader`. For each dev set X the calibrator is fitted on the *other*
dev set's gold-context answers (cross-fitting: no question is judged by a calibrator fitted on it).

- calibration: ECE (15 equal-width bins) of the within-context probability, temperature scaling and
  Platt scaling (score; score + probability), fitted on one set, measured on the other (gold contexts);
- (a) in-index questions and (b) the same questions with their document removed from the index (it is
  left out of the retrieved list, which then takes the next passages; BM25 statistics and score
  normalisation still count it, a small difference from rebuilding): answer rate, EM / F1 of the given
  answers, at several thresholds;
- ranking: the share of answers taken from the gold document and the open-vs-given F1 gap (given: the
  reader alone on the gold context) with today's ranking (P(passage) × P(span | passage)) and with
  the calibrated confidence.

    python benchmarks/bench_abstention.py --reader outputs/offline-e5-small/best --out abstention.json
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

THRESHOLDS = "0,0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5"
CALIBRATORS = {
    "temperature": {"method": "temperature"},
    "platt (score)": {"method": "platt", "features": ("score",)},
    "platt (score + probability)": {"method": "platt", "features": ("score", "probability")},
}


def load_questions(dev_file: Path, doc_id_of_context: dict[str, str]) -> list[dict]:
    from kqa.data import load_data_file

    examples, _ = load_data_file(dev_file)
    return [{**e, "doc_id": doc_id_of_context[e["context"]]} for e in examples]


def calibration_table(scores: dict) -> tuple[list[dict], dict]:
    """ECE of each calibrator fitted on one set and measured on the other (gold contexts)."""
    from kqa.calibration import expected_calibration_error, fit_calibrator

    rows, fitted = [], {}
    for fit_set, (contexts, em, _) in scores.items():
        for measure_set, (m_contexts, m_em, _) in scores.items():
            kept = [(c, y) for c, y in zip(m_contexts, m_em) if c.scores]
            before = expected_calibration_error([c.probabilities[0] for c, _ in kept], [y for _, y in kept])
            row = {"fit on": fit_set, "measured on": measure_set, "probability (none)": before}
            for name, spec in CALIBRATORS.items():
                options = {"features": spec["features"]} if "features" in spec else {}
                calibrator = fit_calibrator(contexts, em, spec["method"], **options)
                fitted[(fit_set, name)] = calibrator
                confidence = [float(calibrator.confidences(c)[0]) for c, _ in kept]
                row[name] = expected_calibration_error(confidence, [y for _, y in kept])
            rows.append(row)
    return rows, fitted


def score_answer(answer, question: dict) -> tuple[float, float]:
    from kqa.metric import score_question

    return score_question(answer.text if answer is not None else "", question["answers"]["text"])


def setting_rows(pipeline, questions, hits, candidates, given_f1, thresholds, label) -> list[dict]:
    """Per ranking and threshold: answer rate, EM / F1 of the answered, F1 over all questions (an
    abstention scores 0), share from the gold document, gap to the gold-context F1."""
    rows = []
    for by in ("probability", "confidence"):
        for threshold in thresholds if by == "confidence" else [None]:
            answered, em, f1, gold_doc = 0, [], [], 0
            for q, found, answers in zip(questions, hits, candidates):
                result = pipeline.rank(q["question"], found, answers, score_threshold=threshold, by=by)
                if result.answers:
                    answered += 1
                    e, f = score_answer(result.answers[0], q)
                    em.append(e)
                    f1.append(f)
                    gold_doc += result.answers[0].doc_id == q["doc_id"]
            n = len(questions)
            open_f1 = 100 * sum(f1) / n
            rows.append(
                {
                    "setting": label,
                    "ranking": "today (P(passage) × P(span))" if by == "probability" else "calibrated confidence",
                    "threshold": threshold,
                    "answer rate": answered / n,
                    "EM answered": 100 * np.mean(em) if em else float("nan"),
                    "F1 answered": 100 * np.mean(f1) if f1 else float("nan"),
                    "F1 all": open_f1,
                    "from gold doc": gold_doc / max(answered, 1),
                    "gap to given": given_f1 - open_f1,
                }
            )
    return rows


def open_summary(pipeline, questions, by_setting, given_f1, label) -> dict:
    """ECE of the best answer's confidence in the open setting (in index; in index and removed together,
    what an abstention decision faces), the gold-document share and the F1 gap, calibrated ranking."""
    from kqa.calibration import expected_calibration_error

    best = {}
    for setting, (hits, candidates) in by_setting.items():
        results = [pipeline.rank(q["question"], f, a, by="confidence") for q, f, a in zip(questions, hits, candidates)]
        best[setting] = [(r.answers[0] if r.answers else None, q) for r, q in zip(results, questions)]
    conf = {k: [a.confidence if a else 0.0 for a, _ in v] for k, v in best.items()}
    em = {k: [score_answer(a, q)[0] if a else 0.0 for a, q in v] for k, v in best.items()}
    f1 = [score_answer(a, q)[1] if a else 0.0 for a, q in best["in index"]]
    return {
        "set": label,
        "ECE in index": expected_calibration_error(conf["in index"], em["in index"]),
        "ECE in index + removed": expected_calibration_error(sum(conf.values(), []), sum(em.values(), [])),
        "from gold doc": float(np.mean([bool(a) and a.doc_id == q["doc_id"] for a, q in best["in index"]])),
        "gap to given": given_f1 - 100 * float(np.mean(f1)),
    }


class CachingReader:
    """A reader whose predictions are kept by (question, context): the calibrators are compared on one
    reading of the passages."""

    def __init__(self, reader):
        self.reader, self.calibrator, self.cache = reader, None, {}

    def predict_rows(self, rows, top_k=None):
        missing = [r for r in rows if (r["question"], r["context"]) not in self.cache]
        if missing:
            fresh = self.reader.predict_rows([{**r, "id": str(i)} for i, r in enumerate(missing)], top_k=top_k)
            self.cache.update({(r["question"], r["context"]): fresh[str(i)] for i, r in enumerate(missing)})
        return {r["id"]: self.cache[(r["question"], r["context"])] for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--embedding-model", default=str(REPO_ROOT / "models" / "e5-small"))
    parser.add_argument("--reader", default=str(REPO_ROOT / "outputs" / "offline-e5-small" / "best"))
    parser.add_argument("--passages", type=int, default=5, help="passages read per question")
    parser.add_argument("--thresholds", default=THRESHOLDS)
    parser.add_argument("--calibrator", default="platt (score + probability)", choices=list(CALIBRATORS))
    parser.add_argument("--limit", type=int, help="questions per set (a quick run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()
    from kqa.cli.calibrate import read_dev_set
    from kqa.inference import QuestionAnswerer
    from kqa.retrieval import Embedder, RetrieveAndRead, Retriever, RetrieverSettings, load_corpus

    machine, settings = machine_info(), settings_from_args(args)
    print_header(machine, settings)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    dev_files = sorted(f for f in args.data_dir.rglob("*.json") if "dev" in f.name.lower())
    documents, _ = load_corpus(dev_files)
    doc_id_of_context = {}
    for d in documents:
        doc_id_of_context.setdefault(d.text, d.id)
    sets = {
        ("korquad" if "korquad" in f.name.lower() else "tydi"): load_questions(f, doc_id_of_context) for f in dev_files
    }
    sets = {k: v[: args.limit] if args.limit else v for k, v in sets.items()}
    start = time.perf_counter()
    retriever = Retriever.build(documents, RetrieverSettings(), embedder=Embedder.from_pretrained(args.embedding_model))
    print(f"index: {len(documents)} documents, {len(retriever.passages)} passages, {time.perf_counter() - start:.0f} s")
    model = QuestionAnswerer.from_pretrained(args.reader)
    reader = CachingReader(model)
    pipeline = RetrieveAndRead(retriever, reader, passages=args.passages)

    start = time.perf_counter()
    given = {name: read_dev_set(model, qs)[:3] for name, qs in sets.items()}
    print(f"gold contexts read: {time.perf_counter() - start:.0f} s")
    ece_rows, fitted = calibration_table(given)
    print_table(ece_rows, [(k, k, ".4f" if k not in ("fit on", "measured on") else "") for k in ece_rows[0]], "ECE")

    rows, summary, start = [], [], time.perf_counter()
    for name, qs in sets.items():
        other = next(k for k in sets if k != name) if len(sets) > 1 else name
        given_f1 = 100 * float(np.mean(given[name][2]))
        retrieved = retriever.retrieve_many([q["question"] for q in qs], args.passages + 10)
        in_index = [found[: args.passages] for found in retrieved]
        removed = [
            [h for h in found if h.passage.doc_id != q["doc_id"]][: args.passages] for q, found in zip(qs, retrieved)
        ]
        union = [a + [h for h in b if h.passage.id not in {x.passage.id for x in a}] for a, b in zip(in_index, removed)]
        for calibrator_name in CALIBRATORS:
            reader.calibrator = fitted[(other, calibrator_name)]  # the reader's predictions are cached
            candidates = pipeline.candidates([q["question"] for q in qs], union)
            by_setting = {}
            for label, hits in (("in index", in_index), ("document removed", removed)):
                ids = [{h.passage.id for h in found} for found in hits]
                kept = [[a for a in answers if a.passage_id in keep] for answers, keep in zip(candidates, ids)]
                by_setting[label] = (hits, kept)
                if calibrator_name == args.calibrator:
                    setting = f"{name}, {label} (given F1 {given_f1:.2f})"
                    rows += setting_rows(pipeline, qs, hits, kept, given_f1, thresholds, setting)
            summary.append(
                open_summary(pipeline, qs, by_setting, given_f1, f"{name} ({calibrator_name}, fit on {other})")
            )
    print(f"retrieve and read: {time.perf_counter() - start:.0f} s")
    print_table(summary, [(k, k, "" if k == "set" else ".3f") for k in summary[0]], "open setting, calibrated ranking")
    columns = [(k, k, "" if k in ("setting", "ranking") else ".3f") for k in rows[0]]
    print_table(rows, columns, f"abstention and ranking ({args.calibrator}, fitted on the other dev set)")
    write_json(args.out, machine=machine, settings=settings, ece=ece_rows, open=summary, abstention=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
