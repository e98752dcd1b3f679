"""Benchmark: kqa's vectorised post-processor against the common per-pair Python loop.

The reference is modelled on `postprocess_qa_predictions` of the Hugging Face question-answering
examples (`utils_qa.py`): group windows by example, per window take the top start and end indexes,
run a nested Python loop over start × end with the checks inside the loop, append one dict per
candidate, sort the pooled candidates, slice the text, softmax with numpy. It applies exactly kqa's
rules (top-n among context tokens with ties to the lower index, span-length and empty-span filters,
one entry per character span with its best score, score-then-offset order), so both must produce
identical best answers and n-best lists; the benchmark asserts that before it reports any time.

Both implementations are timed on the same inputs, in two forms:
- Python lists (rows with only the keys the post-processors read): the reference's fastest form;
- `datasets.Dataset`s with the columns kqa.data (id, title, context, question, answers,
  is_impossible) and kqa.features (input_ids, attention_mask, token_type_ids, example_id, cls_index,
  offset_mapping) produce: what the training loop and the Hugging Face example script pass. The
  reference reads rows from them as the Hugging Face function does; kqa reads only the columns it
  needs, straight from Arrow.

The data are synthetic but shaped like real evaluation features: Korean-syllable contexts cut into
1–3-character tokens, a question prefix with special tokens (offsets [-1, -1]), overlapping windows
(stride half a window), a shorter last window, logits padded to a fixed width. `--logits gaussian`
draws every logit independently; `--logits peaked` adds a bump of high start and end logits to every
window, as a trained model produces (many more valid start × end pairs).

    python benchmarks/bench_postprocess.py --num-examples 5000 --windows 4 --out results.json

What one speed-up of kqa.postprocess buys: copy kqa/postprocess.py, replace that step by its plain
form, and time the copy next to kqa on the same inputs (its outputs are asserted equal to kqa's):

    python benchmarks/bench_postprocess.py --inputs datasets --no-reference --repeat 9 --variant copy.py
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

from kqa.postprocess import PostprocessConfig, decode_answers  # noqa: E402

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------


def make_data(num_examples: int, windows: int, seq_len: int, seed: int, logits: str = "gaussian"):
    """Examples (id, context), features (example_id, cls_index, offset_mapping) and logits `[F, seq_len]`."""
    rng = np.random.default_rng(seed)
    examples, features = [], []
    for e in range(num_examples):
        question_tokens = int(rng.integers(8, 24))
        capacity = seq_len - question_tokens - 3  # [CLS] question [SEP] context [SEP]
        step = capacity // 2
        num_tokens = capacity + (windows - 1) * step - int(rng.integers(0, max(step // 2, 1)))
        token_chars = rng.integers(1, 4, size=num_tokens)
        syllables = rng.integers(HANGUL_FIRST, HANGUL_LAST + 1, size=int(token_chars.sum()))
        space_after = rng.random(num_tokens) < 0.4
        pieces, offsets, pos, used = [], [], 0, 0
        for t in range(num_tokens):
            n = int(token_chars[t])
            pieces.append("".join(map(chr, syllables[used : used + n].tolist())))
            used += n
            offsets.append([pos, pos + n])
            pos += n
            if space_after[t]:
                pieces.append(" ")
                pos += 1
        example_id = f"q{e:06d}"
        examples.append({"id": example_id, "context": "".join(pieces)})
        prefix = [[-1, -1]] * (question_tokens + 2)
        for w in range(windows):
            lo = w * step
            if lo >= num_tokens:
                break
            hi = min(lo + capacity, num_tokens)
            features.append(
                {"example_id": example_id, "cls_index": 0, "offset_mapping": prefix + offsets[lo:hi] + [[-1, -1]]}
            )
            if hi == num_tokens:
                break
    start_logits = rng.normal(0.0, 3.0, size=(len(features), seq_len)).astype(np.float32)
    end_logits = rng.normal(0.0, 3.0, size=(len(features), seq_len)).astype(np.float32)
    if logits == "peaked":
        for f, feature in enumerate(features):
            offsets = feature["offset_mapping"]
            context_start = next(i for i, o in enumerate(offsets) if o[0] >= 0)
            first = int(rng.integers(context_start, len(offsets) - 15))
            start_logits[f, first : first + 8] += 8.0
            end_logits[f, first + 2 : first + 14] += 8.0
    return examples, features, start_logits, end_logits


def as_datasets(examples, features, seed: int):
    """The same data as `datasets.Dataset`s with the columns kqa.data (examples) and kqa.features
    (eval features) produce."""
    import datasets
    from datasets import Features, Sequence, Value

    rng = np.random.default_rng(seed)
    example_rows = []
    for example in examples:
        question = "".join(map(chr, rng.integers(HANGUL_FIRST, HANGUL_LAST + 1, size=12).tolist())) + "?"
        answer_start = int(rng.integers(0, len(example["context"]) - 5))
        example_rows.append(
            {
                "id": example["id"],
                "title": "",
                "context": example["context"],
                "question": question,
                "answers": {
                    "text": [example["context"][answer_start : answer_start + 4]],
                    "answer_start": [answer_start],
                },
                "is_impossible": False,
            }
        )
    rows = []
    for feature in features:
        n = len(feature["offset_mapping"])
        rows.append(
            {
                "input_ids": rng.integers(5, 32000, size=n, dtype=np.int32).tolist(),
                "attention_mask": [1] * n,
                "token_type_ids": [0 if o[0] < 0 else 1 for o in feature["offset_mapping"]],
                "example_id": feature["example_id"],
                "cls_index": feature["cls_index"],
                "offset_mapping": feature["offset_mapping"],
            }
        )
    schema = Features(
        {
            "input_ids": Sequence(Value("int32")),
            "attention_mask": Sequence(Value("int8")),
            "token_type_ids": Sequence(Value("int8")),
            "example_id": Value("string"),
            "cls_index": Value("int32"),
            "offset_mapping": Sequence(Sequence(Value("int64"), length=2)),
        }
    )
    return datasets.Dataset.from_list(example_rows), datasets.Dataset.from_list(rows, features=schema)


# --------------------------------------------------------------------------------------------------
# The per-pair reference (Hugging Face utils_qa style, kqa's rules)
# --------------------------------------------------------------------------------------------------


def _top_context_indexes(logits, offset_mapping, n_best_size):
    """kqa's rule: the n best *context* tokens (Hugging Face takes the n best of all tokens and lets the
    loop's checks drop question tokens). The stable sort of the negated logits puts ties at the lower index."""
    indexes = []
    for i in np.argsort(-logits[: len(offset_mapping)], kind="stable").tolist():
        if offset_mapping[i] is not None and offset_mapping[i][0] >= 0:
            indexes.append(i)
            if len(indexes) == n_best_size:
                break
    return indexes


def reference_postprocess(examples, features, all_start_logits, all_end_logits, n_best_size, max_answer_length):
    """id → (best text, n-best list of dicts); one Python iteration per start × end pair.

    The structure of Hugging Face `postprocess_qa_predictions` (group features by example, per window
    the top-n start and end indexes, a nested loop with the checks inside, one dict per candidate, a
    sort of the pooled candidates, text sliced by offsets, numpy softmax), with kqa's rules where they
    differ: top-n among context tokens, empty character spans dropped, one entry per character span
    (its best score; the earliest on ties), ties in score ordered by character offsets.
    """
    ids = examples["id"] if hasattr(examples, "column_names") else [example["id"] for example in examples]
    example_id_to_index = {k: i for i, k in enumerate(ids)}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)

    results = collections.OrderedDict()
    for example_index, example in enumerate(examples):
        prelim_predictions = []
        min_null_score = None
        for feature_index in features_per_example[example_index]:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            # As in the Hugging Face function: the optional token_is_max_context (absent here) and the
            # minimum null score are read for every window.
            token_is_max_context = features[feature_index].get("token_is_max_context", None)
            feature_null_score = float(start_logits[0]) + float(end_logits[0])
            if min_null_score is None or min_null_score > feature_null_score:
                min_null_score = feature_null_score
            start_indexes = _top_context_indexes(start_logits, offset_mapping, n_best_size)
            end_indexes = _top_context_indexes(end_logits, offset_mapping, n_best_size)
            for start_index in start_indexes:
                for end_index in end_indexes:
                    # Out-of-scope answers: out of bounds, or not in the context.
                    if (
                        start_index >= len(offset_mapping)
                        or end_index >= len(offset_mapping)
                        or offset_mapping[start_index] is None
                        or len(offset_mapping[start_index]) < 2
                        or offset_mapping[end_index] is None
                        or len(offset_mapping[end_index]) < 2
                        or offset_mapping[start_index][0] < 0
                        or offset_mapping[end_index][0] < 0
                    ):
                        continue
                    # Answers with a length < 0 or > max_answer_length.
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    # Answers without the maximum context available (when that information is given).
                    if token_is_max_context is not None and not token_is_max_context.get(str(start_index), False):
                        continue
                    char_start, char_end = offset_mapping[start_index][0], offset_mapping[end_index][1]
                    if char_end <= char_start:
                        continue
                    prelim_predictions.append(
                        {
                            "offsets": (char_start, char_end),
                            "score": float(start_logits[start_index]) + float(end_logits[end_index]),
                            "start_logit": float(start_logits[start_index]),
                            "end_logit": float(end_logits[end_index]),
                        }
                    )
        # Best first; the sort is stable, so among equal (score, offsets) the earliest window stays first.
        prelim_predictions.sort(key=lambda pred: (-pred["score"], pred["offsets"]))
        predictions, seen = [], set()
        for pred in prelim_predictions:
            if pred["offsets"] not in seen:
                seen.add(pred["offsets"])
                predictions.append(pred)
                if len(predictions) == n_best_size:
                    break
        context = example["context"]
        for pred in predictions:
            pred["text"] = context[pred["offsets"][0] : pred["offsets"][1]]
        if predictions:
            scores = np.array([pred["score"] for pred in predictions])
            exp_scores = np.exp(scores - np.max(scores))
            for prob, pred in zip(exp_scores / exp_scores.sum(), predictions):
                pred["probability"] = float(prob)
        results[example["id"]] = (predictions[0]["text"] if predictions else "", predictions)
    return results


# --------------------------------------------------------------------------------------------------
# Timing and comparison
# --------------------------------------------------------------------------------------------------


def assert_same(kqa_predictions, reference) -> None:
    """Raise unless both give the same best answers and n-best lists (texts, offsets, scores,
    probabilities)."""

    def fail(message: str):
        raise AssertionError(f"kqa and the reference disagree: {message}")

    if list(kqa_predictions) != list(reference):
        fail("example order")
    for example_id, (best_text, nbest) in reference.items():
        ours = kqa_predictions[example_id]
        if ours.text != best_text:
            fail(f"{example_id}: best {ours.text!r} vs {best_text!r}")
        got = [(s.text, s.start, s.end) for s in ours.nbest]
        want = [(p["text"], *p["offsets"]) for p in nbest]
        if got != want:
            fail(f"{example_id}: n-best\n{got}\n{want}")
        for s, p in zip(ours.nbest, nbest):
            if not (
                math.isclose(s.score, p["score"], abs_tol=1e-6)
                and math.isclose(s.probability, p["probability"], abs_tol=1e-9)
            ):
                fail(f"{example_id}: {s} vs {p}")


def load_variant(path: Path):
    """A post-processor module from a file (a modified copy of kqa/postprocess.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"variant_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def as_plain(predictions) -> list:
    return [(k, p.text, p.start, p.end, p.score, [s.to_dict() for s in p.nbest]) for k, p in predictions.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=5000)
    parser.add_argument("--windows", type=int, default=4, help="windows per example (the last is shorter)")
    parser.add_argument("--seq-len", type=int, default=384)
    parser.add_argument("--n-best", type=int, default=20)
    parser.add_argument("--max-answer-length", type=int, default=30)
    parser.add_argument("--logits", choices=["gaussian", "peaked"], default="gaussian")
    parser.add_argument("--inputs", choices=["both", "lists", "datasets"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per implementation; median and best are reported")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--variant",
        type=Path,
        action="append",
        default=[],
        help="also time this copy of kqa/postprocess.py (e.g. with one speed-up replaced by its "
        "plain form); its outputs must equal kqa's (repeatable)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the per-pair loop; speed-ups are then relative to kqa"
    )
    args = parser.parse_args(argv)
    variants = [(f"variant {path.stem}", load_variant(path)) for path in args.variant]

    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("kqa.postprocess").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    examples, features, start_logits, end_logits = make_data(
        args.num_examples, args.windows, args.seq_len, args.seed, args.logits
    )
    inputs = {}
    if args.inputs in ("both", "lists"):
        inputs["lists"] = (examples, features)
    if args.inputs in ("both", "datasets"):
        inputs["datasets"] = as_datasets(examples, features, args.seed)
    setup_s = time.perf_counter() - t0
    # Rules 1-6, which the reference implements (Korean answer boundaries: benchmarks/bench_boundaries.py).
    settings = {"n_best_size": args.n_best, "max_answer_length": args.max_answer_length, "answer_boundaries": "off"}
    config = PostprocessConfig(**settings)

    rows = []
    for kind, (ex_in, feat_in) in inputs.items():
        timed = []
        if not args.no_reference:
            ref_times, reference = common.time_calls(
                lambda: reference_postprocess(
                    ex_in, feat_in, start_logits, end_logits, args.n_best, args.max_answer_length
                ),
                args.repeat,
            )
            timed.append(("reference per-pair loop", ref_times))
        kqa_times, ours = common.time_calls(
            lambda: decode_answers(ex_in, feat_in, start_logits, end_logits, config), args.repeat
        )
        timed.append(("kqa vectorised", kqa_times))
        if not args.no_reference:
            assert_same(ours, reference)
        for name, module in variants:
            known = {f.name for f in dataclasses.fields(module.PostprocessConfig)}  # a copy may predate a setting
            variant_config = module.PostprocessConfig(**{k: v for k, v in settings.items() if k in known})
            times, theirs = common.time_calls(
                lambda: module.decode_answers(ex_in, feat_in, start_logits, end_logits, variant_config), args.repeat
            )
            if as_plain(theirs) != as_plain(ours):
                raise AssertionError(f"{name} and kqa disagree")
            timed.append((name, times))
        ref_median = statistics.median(timed[0][1])
        for name, times in timed:
            median = statistics.median(times)
            rows.append(
                {
                    "inputs": kind,
                    "implementation": name,
                    "median_s": median,
                    "best_s": min(times),
                    "examples_per_s": args.num_examples / median,
                    "speedup": ref_median / median,
                }
            )

    settings = json.loads(json.dumps(vars(args), default=str))  # paths as strings
    settings["num_features"] = len(features)
    print(f"machine: {common.machine_info()}")
    print(f"settings: {settings} (data built in {setup_s:.1f} s)")
    same = ([] if args.no_reference else ["kqa = per-pair loop"]) + (["every variant = kqa"] if variants else [])
    print(
        f"outputs identical ({', '.join(same) or 'not compared'}): best answers and n-best lists (text, offsets, "
        f"scores, probabilities)"
    )
    print(f"{'inputs':<9} {'implementation':<30} {'median s':>9} {'best s':>9} {'examples/s':>11} {'speed-up':>9}")
    for r in rows:
        print(
            f"{r['inputs']:<9} {r['implementation']:<30} {r['median_s']:>9.3f} {r['best_s']:>9.3f} "
            f"{r['examples_per_s']:>11.0f} {r['speedup']:>8.1f}x"
        )
    if args.out is not None:
        args.out.write_text(
            json.dumps({"machine": common.machine_info(), "settings": settings, "results": rows}, indent=2) + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
