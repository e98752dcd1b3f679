"""Benchmark evaluation at KorQuAD-dev scale: about 6,000 windows of 384 tokens through a BERT-base-shaped
model, then n-best post-processing and the official metric, as `evaluate.py` and the training loop's
evaluation run them (`kqa.prediction`; Accelerate, mixed precision, windows sorted by length, batches of
`--batch-size`). Seconds for each part.

The dev questions are those of every `*dev*.json` of the data directory, repeated under new ids until their
windows reach `--windows` (KorQuAD 1.0 dev: 5,774 questions, about 6,000 windows of 384). The model is a
random-init BERT of the requested shape (`--bert-base`: klue/bert-base's) with a WordPiece tokenizer trained
on the data: its answers are noise, but the windows, the logits and the post-processor's work are those of a
trained model's (n-best over every window).

    python benchmarks/bench_eval_scale.py --bert-base --bf16 --out eval.json        # a GPU
    python benchmarks/bench_eval_scale.py --smoke --out eval.json                   # tiny, on the CPU

Target (docs/benchmarks.md, GPU): model + post-processing + metric < 15 s for 6,000 windows. Features are
built once per run of training (its setup), so they are timed but not counted in that target.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402
from bench_training import BERT_BASE, quiet_libraries  # noqa: E402

KORQUAD_DEV_WINDOWS = 6000
TARGET_S = 15.0
SMOKE_EXAMPLES = 12
WARMUP_BATCHES = 2  # untimed batches first: CUDA context, cuBLAS handles, allocator


def repeated_examples(examples, copies: int):
    """`copies` copies of the examples, each copy's ids suffixed so that every question stays distinct."""
    import datasets

    parts = [examples.map(lambda row, c=c: {"id": f"{row['id']}#{c}"}) for c in range(copies)]
    return datasets.concatenate_datasets(parts)


def build_model(args, examples, work: Path):
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    tokenizer = build_wordpiece_tokenizer(common.corpus_texts(examples), vocab_size=args.vocab_size)
    shape = dict(BERT_BASE) if args.bert_base else common.bert_shape(args)
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    torch.manual_seed(args.seed)
    model = QuestionAnsweringModel.from_config(tiny_bert_config(**shape))
    model_dir = work / "model"
    geometry = {"max_seq_length": args.max_seq_length, "doc_stride": args.doc_stride, "max_query_length": 64}
    model.save_pretrained(model_dir, tokenizer=tokenizer, kqa_config=geometry)
    return model_dir


def timed(stages: dict, name: str, fn):
    from bench_training import synchronize

    t0 = time.perf_counter()
    result = fn()
    synchronize()
    stages[name] = time.perf_counter() - t0
    return result


def evaluate_at_scale(args, examples, model_dir: Path) -> dict:
    """Features, model, post-processing and metric of the repeated dev set, each timed."""
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from kqa.dataloaders import QACollator, make_eval_dataloader, pad_multiple_for, sort_by_length
    from kqa.features import prepare_eval_features
    from kqa.metric import score_predictions
    from kqa.modeling import QuestionAnsweringModel
    from kqa.postprocess import decode_answers
    from kqa.prediction import load_settings, predict_logits

    settings = load_settings(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    one_copy, _ = prepare_eval_features(examples, tokenizer, settings.features, cache=False)
    copies = max(1, math.ceil(args.windows / len(one_copy)))
    examples = repeated_examples(examples, copies)
    accelerator = Accelerator(mixed_precision="bf16" if args.bf16 else "no")
    model = accelerator.prepare(QuestionAnsweringModel.from_pretrained(model_dir))
    stages: dict[str, float] = {}
    features, _ = timed(
        stages,
        "features",
        lambda: prepare_eval_features(examples, tokenizer, settings.features, with_labels=True, cache=False),
    )
    features = sort_by_length(features)
    collator = QACollator.from_tokenizer(tokenizer, pad_to_multiple_of=pad_multiple_for(accelerator.mixed_precision))
    loader = accelerator.prepare(make_eval_dataloader(features, collator, args.batch_size))
    warmup = accelerator.prepare(make_eval_dataloader(features.select(range(WARMUP_BATCHES)), collator, 1))
    predict_logits(model, warmup, settings.features.max_seq_length, accelerator=accelerator, disable_tqdm=True)
    width = settings.features.max_seq_length
    logits = timed(
        stages, "model", lambda: predict_logits(model, loader, width, accelerator=accelerator, disable_tqdm=True)
    )
    predictions = timed(
        stages,
        "post-processing",
        lambda: decode_answers(examples, features, logits.start, logits.end, settings.postprocess),
    )
    result = timed(stages, "metric", lambda: score_predictions(examples, {k: p.text for k, p in predictions.items()}))
    evaluation_s = stages["model"] + stages["post-processing"] + stages["metric"]
    return {
        "questions": len(examples),
        "copies": copies,
        "windows": len(features),
        "tokens_non_pad": int(sum(len(ids) for ids in features["input_ids"])),
        "stages_s": stages,
        "evaluation_s": evaluation_s,
        "end_to_end_s": evaluation_s + stages["features"],
        "windows_per_s": len(features) / stages["model"],
        "em": result.exact_match,
        "f1": result.f1,
        "target_s": TARGET_S,
        "target_met": None if args.smoke else evaluation_s < TARGET_S,  # tiny shapes say nothing of the target
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default $KQA_DATA_DIR or ../shared/data")
    parser.add_argument("--windows", type=int, default=KORQUAD_DEV_WINDOWS, help="repeat the dev set to this many")
    parser.add_argument("--max-examples", type=int, default=None, help="first N dev questions (before repeating)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    parser.add_argument("--max-seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    common.add_bert_shape_arguments(parser, what="random model")
    parser.add_argument("--bert-base", action="store_true", help="klue/bert-base's shape; random weights")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (Accelerate's autocast)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and 40 windows: checks the script runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.vocab_size, args.hidden_size, args.layers, args.heads, args.intermediate_size = 300, 32, 1, 2, 64
        args.windows, args.batch_size, args.max_seq_length, args.doc_stride, args.bert_base = 40, 8, 128, 32, False
        args.max_examples = args.max_examples or SMOKE_EXAMPLES
    import tempfile

    quiet_libraries()
    data_dir = args.data_dir or common.default_data_dir()
    examples, per_file = common.load_examples(common.squad_files(data_dir, split="dev"), args.max_examples)
    with tempfile.TemporaryDirectory(prefix="kqa-bench-eval-") as tmp:
        result = evaluate_at_scale(args, examples, build_model(args, examples, Path(tmp)))
    machine = common.machine_info()
    settings = {**common.settings_from_args(args), "files": per_file}
    common.print_header(machine, settings)
    rows = [{"part": name, "seconds": seconds} for name, seconds in result["stages_s"].items()]
    rows += [
        {"part": "evaluation (model + post-processing + metric)", "seconds": result["evaluation_s"]},
        {"part": "end to end (with features)", "seconds": result["end_to_end_s"]},
    ]
    common.print_table(
        rows,
        [("part", "part", ""), ("seconds", "s", ".2f")],
        title=f"{result['questions']} questions ({result['copies']} copies of the dev files), {result['windows']} "
        f"windows of up to {args.max_seq_length} tokens, batches of {args.batch_size}, "
        f"{'bf16' if args.bf16 else 'fp32'}; {result['windows_per_s']:,.0f} windows/s through the model",
    )
    verdict = {True: "met", False: "not met", None: "not judged: --smoke"}[result["target_met"]]
    print(f"evaluation {result['evaluation_s']:.2f} s (target < {TARGET_S:.0f} s for ~6,000 windows: {verdict})")
    common.write_json(args.out, machine=machine, settings=settings, results=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
