"""Benchmark: Korean-aware answer boundaries (`answer_boundaries="korean"`, kqa.boundaries) against none.

A trained model's logits are computed once per dev set (on the CPU, in feature order, saved to
`--logits-dir` so that a second run skips the model), then post-processed twice: with
`answer_boundaries` "off" and "korean", everything else as saved with the model. Reported per set:
official EM / F1 of both, and per question (EM level) how many answers went right → wrong and
wrong → right, how many answers changed at all, and examples of each; then the post-processing time
of both settings (median of `--repeat` calls; "korean" with Kiwi already loaded, its load timed apart).

    python benchmarks/bench_boundaries.py --model /work/main/outputs/offline-e5-small/best --out boundaries.json

The tag lists of kqa.boundaries come from the train files (scripts/answer_endings.py); the dev sets
here only measure them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

DEV_FILES = {
    "korquad_dev": "korquad-1.0-sample/KorQuAD_v1.0_dev.json",
    "tydi_dev": "tydiqa-goldp-ko/korean_tydiqa_dev.json",
}


def dev_logits(model_dir: Path, path: Path, cache: Path | None, settings):
    """Examples, features and their logits (read from `cache` when it exists, else computed and saved)."""
    from transformers import AutoTokenizer

    from kqa.data import load_squad_json
    from kqa.features import prepare_eval_features

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples, _ = load_squad_json(path)
    features, _ = prepare_eval_features(examples, tokenizer, settings.features, cache=False)
    if cache is not None and cache.exists():
        saved = np.load(cache)
        return examples, features, saved["start"], saved["end"]
    from kqa.dataloaders import QACollator, make_eval_dataloader
    from kqa.modeling import QuestionAnsweringModel
    from kqa.prediction import EVAL_BATCH_SIZE, predict_logits

    model = QuestionAnsweringModel.from_pretrained(model_dir)
    loader = make_eval_dataloader(features, QACollator.from_tokenizer(tokenizer), EVAL_BATCH_SIZE)
    logits = predict_logits(model, loader, settings.features.max_seq_length, desc=path.stem)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, start=logits.start, end=logits.end)
    return examples, features, logits.start, logits.end


def per_question(examples, predictions) -> dict[str, tuple[float, float]]:
    from kqa.metric import exact_match_score, f1_score

    scores = {}
    for row in examples:
        golds, text = row["answers"]["text"], predictions[row["id"]].text
        scores[row["id"]] = (max(exact_match_score(text, g) for g in golds), max(f1_score(text, g) for g in golds))
    return scores


def compare(name: str, examples, features, start, end, settings, repeat: int) -> dict:
    from kqa.metric import score_predictions
    from kqa.postprocess import decode_answers

    row, outputs = {"set": name, "questions": len(examples)}, {}
    for mode in ("off", "korean"):
        config = settings.with_overrides("bench", answer_boundaries=mode).postprocess
        times, predictions = common.time_calls(lambda: decode_answers(examples, features, start, end, config), repeat)
        result = score_predictions(examples, {k: p.text for k, p in predictions.items()})
        row[f"{mode}_em"], row[f"{mode}_f1"] = result.exact_match, result.f1
        row[f"{mode}_ms"] = 1000 * common.median(times)
        outputs[mode] = predictions
    before, after = per_question(examples, outputs["off"]), per_question(examples, outputs["korean"])
    gold = {r["id"]: r["answers"]["text"] for r in examples}
    changes = {"right_to_wrong": [], "wrong_to_right": [], "wrong_to_wrong": [], "unchanged_f1_down": 0}
    for key in before:
        old, new = outputs["off"][key].text, outputs["korean"][key].text
        if old == new:
            continue
        kind = {(1.0, 0.0): "right_to_wrong", (0.0, 1.0): "wrong_to_right"}.get((before[key][0], after[key][0]))
        changes[kind or "wrong_to_wrong"].append(f"{old} → {new} (gold {' | '.join(gold[key])})")
        changes["unchanged_f1_down"] += after[key][1] < before[key][1]
    row["changed"] = sum(len(v) for k, v in changes.items() if k != "unchanged_f1_down")
    row["right_to_wrong"], row["wrong_to_right"] = len(changes["right_to_wrong"]), len(changes["wrong_to_right"])
    row["f1_down"] = changes.pop("unchanged_f1_down")
    row["examples"] = changes
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=common.default_data_dir())
    parser.add_argument("--logits-dir", type=Path, help="where the logits are saved and read back (default: none)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from kqa.boundaries import kiwi
    from kqa.prediction import load_settings

    machine = common.machine_info()
    common.print_header(machine, common.settings_from_args(args))
    settings = load_settings(args.model)
    tick = time.perf_counter()
    kiwi().tokenize("한국어 형태소 분석기를 불러온다.")  # the model loads on the first analysis
    kiwi_load_s = time.perf_counter() - tick
    rows = []
    for name, relative in DEV_FILES.items():
        cache = args.logits_dir / f"{name}.npz" if args.logits_dir else None
        examples, features, start, end = dev_logits(args.model, args.data_dir / relative, cache, settings)
        rows.append(compare(name, examples, features, start, end, settings, args.repeat))
        for kind in ("right_to_wrong", "wrong_to_right", "wrong_to_wrong"):
            print(f"\n{name} {kind}:")
            for line in rows[-1]["examples"][kind]:
                print("   ", line)
    columns = [("set", "set", "s"), ("questions", "questions", "d")]
    columns += [(f"{m}_{k}", f"{k.upper()} {m}", ".2f") for k in ("em", "f1") for m in ("off", "korean")]
    columns += [(k, k.replace("_", " "), "d") for k in ("changed", "right_to_wrong", "wrong_to_right", "f1_down")]
    columns += [("off_ms", "post-process ms off", ".1f"), ("korean_ms", "ms korean", ".1f")]
    common.print_table(rows, columns, title=f"answer_boundaries off vs korean (Kiwi load {kiwi_load_s:.1f} s)")
    common.write_json(args.out, machine=machine, kiwi_load_s=kiwi_load_s, results=rows)


if __name__ == "__main__":
    main()
