"""Benchmark training throughput: the kqa loop (`kqa.loop.QATrainingRecipe`) against `transformers.Trainer`
with the common recipe (every example padded to 512 tokens, no stride) and against `Trainer` with
dynamic padding on kqa's own features.

The three runs share one process, one backbone config and the same initial weights (a random-init BERT
saved once and loaded by all three; checked tensor by tensor), the same training examples (every
`*train*.json` of the data directory), the same batch size, optimizer-step count, learning-rate
schedule and precision. Only the optimisation steps are timed: setup (tokenizer, features, model,
optimizer) is excluded, and throughput is taken over steps 2..N-1 (the first step warms up allocators
and kernels; after the last, each loop does its end-of-training work). Tokens are counted from the batches the model actually receives (a forward pre-hook):
non-padding tokens (attention_mask) and padded tokens (the tensor size, i.e. the compute spent).

    python benchmarks/bench_training.py --out results.json                    # CPU default, a few minutes
    python benchmarks/bench_training.py --bert-base --bf16 --max-seq-length 384 --peak-tflops 989 --steps 100 \\
        --batch-size 32 --out results.json                                     # a GPU (H100 dense bf16 peak)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

BERT_BASE = {"vocab_size": 32000, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072}  # klue/bert-base's shape


class BatchRecorder:
    """A forward pre-hook that records, for every training forward pass, its start time and the
    padded and non-padding token counts of its batch."""

    def __init__(self, module):
        import torch

        self.times: list[float] = []
        self.padded: list[int] = []
        self.non_pad: list[int] = []
        self._cuda = torch.cuda.is_available()
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not module.training:
            return None
        if self._cuda:  # timestamps must not run ahead of the device
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.padded.append(int(input_ids.numel()))
        self.non_pad.append(int(mask.sum()) if mask is not None else int(input_ids.numel()))
        return None

    def remove(self) -> None:
        self._handle.remove()


def non_embedding_parameters(model) -> int:
    """Parameters outside the embedding tables: the N of the 6·N·tokens training-FLOPs estimate."""
    return sum(p.numel() for name, p in model.named_parameters() if ".embeddings." not in f".{name}")


def summarise(name: str, features: str, padding: str, recorder: BatchRecorder, train_s: float, batch_size: int,
              steps: int, n_params: int, peak_tflops: float | None) -> dict:
    if len(recorder.times) != steps:
        raise RuntimeError(f"{name}: expected {steps} training forward passes, saw {len(recorder.times)}")
    # Steady state: steps 2..N-1, from the start of step 2 to the start of step N. The first step warms
    # up allocators and kernels; after the last one each loop does its end-of-training work.
    steady_steps = steps - 2
    steady_s = recorder.times[-1] - recorder.times[1]
    padded = sum(recorder.padded[1:-1])
    non_pad = sum(recorder.non_pad[1:-1])
    flops = 6.0 * n_params * padded
    row = {
        "recipe": name, "features": features, "padding": padding, "train_s": train_s,
        "steady_s": steady_s, "s_per_step": steady_s / steady_steps,
        "samples_per_s": steady_steps * batch_size / steady_s,
        "non_pad_tokens_per_s": non_pad / steady_s, "padded_tokens_per_s": padded / steady_s,
        "pad_fraction": 1.0 - non_pad / padded if padded else 0.0,
        "tokens_non_pad_total": sum(recorder.non_pad), "tokens_padded_total": sum(recorder.padded),
        "model_tflops_per_s": flops / steady_s / 1e12,
    }
    row["mfu"] = row["model_tflops_per_s"] / peak_tflops if peak_tflops else None
    return row


def build_initial_model(args, train_examples, work: Path) -> tuple[Path, object, int]:
    """A WordPiece tokenizer trained on the examples, a random-init BERT of the requested shape and its
    span head, saved once (kqa save_pretrained, transformers layout) for all three runs to load."""
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    model_dir = work / "initial-model"
    tokenizer = build_wordpiece_tokenizer(common.corpus_texts(train_examples), vocab_size=args.vocab_size)
    shape = dict(BERT_BASE) if args.bert_base else common.bert_shape(args)
    # The trained vocabulary can be smaller than asked for on a small corpus; the table never is.
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    config = tiny_bert_config(max_position_embeddings=512, hidden_dropout_prob=0.1,
                              attention_probs_dropout_prob=0.1, **shape)
    torch.manual_seed(args.seed)
    model = QuestionAnsweringModel.from_config(config)
    model.save_pretrained(model_dir, tokenizer=tokenizer, kqa_config={"max_seq_length": args.max_seq_length})
    return model_dir, tokenizer, non_embedding_parameters(model)


def setup_kqa(args, model_dir: Path, train_files: list[Path], work: Path):
    from kqa.config import TrainConfig
    from kqa.loop import QATrainingRecipe

    config = TrainConfig.from_flat(
        model_name_or_path=str(model_dir), dataset_name=None, train_files=[str(f) for f in train_files],
        max_train_samples=args.max_train_examples, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
        per_device_train_batch_size=args.batch_size, max_train_steps=args.steps, learning_rate=args.learning_rate,
        weight_decay=0.01, warmup_ratio=0.1, mixed_precision="bf16" if args.bf16 else "no", seed=args.seed,
        eval_strategy="no", save_strategy="no", logging_steps=args.steps, report_to="none", disable_tqdm=True,
        output_dir=str(work / "kqa-run"),
    )
    recipe = QATrainingRecipe(config).setup()
    model = recipe.accelerator.unwrap_model(recipe.model)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return recipe, initial


def train_kqa(recipe):
    recorder = BatchRecorder(recipe.accelerator.unwrap_model(recipe.model))
    t0 = time.perf_counter()
    recipe.train()
    synchronize()
    end = time.perf_counter()
    recorder.remove()
    return recorder, end - t0


def run_trainer(args, model_dir: Path, dataset, collator, initial: dict, work: Path, name: str):
    from transformers import AutoModelForQuestionAnswering, PrinterCallback, Trainer, TrainingArguments

    import torch

    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir))
    common.assert_same_weights(initial, model, name)
    training_args = TrainingArguments(
        output_dir=str(work / name.replace(" ", "-")), per_device_train_batch_size=args.batch_size,
        max_steps=args.steps, learning_rate=args.learning_rate, weight_decay=0.01,
        warmup_steps=math.ceil(0.1 * args.steps), lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed,
        bf16=args.bf16, report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # no metrics print-out in the middle of the table
    recorder = BatchRecorder(model)
    t0 = time.perf_counter()
    trainer.train()
    synchronize()
    end = time.perf_counter()
    recorder.remove()
    return recorder, end - t0, getattr(training_args.optim, "value", training_args.optim)


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=common.default_data_dir(),
                        help="folder of SQuAD-format JSON files; every *train*.json is used; "
                             "default $KQA_DATA_DIR or ../shared/data")
    parser.add_argument("--max-train-examples", type=int, default=None, help="first N training examples only")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--max-seq-length", type=int, default=384, help="kqa's window length")
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--reference-max-length", type=int, default=512, help="the common recipe's padded length")
    common.add_bert_shape_arguments(parser)
    parser.add_argument("--bert-base", action="store_true",
                        help="klue/bert-base's shape (vocab 32000, hidden 768, 12 layers, 12 heads); random weights")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision in all three runs (a GPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak dense TFLOP/s at the training precision, for MFU")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be at least 3 (throughput is measured over steps 2..N-1)")

    import datasets
    import torch
    import transformers
    from transformers import DataCollatorWithPadding, default_data_collator

    os.environ.setdefault("WANDB_MODE", "disabled")
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kqa").setLevel(logging.WARNING)

    previous_cache_dir = os.environ.get("KQA_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="kqa-bench-training-") as tmp:
        work = Path(tmp)
        os.environ["KQA_CACHE_DIR"] = str(work / "cache")
        try:
            t0 = time.perf_counter()
            train_files = common.squad_files(args.data_dir, split="train")
            examples, per_file = common.load_examples(train_files, args.max_train_examples)
            model_dir, tokenizer, n_params = build_initial_model(args, examples, work)
            reference_features, reference_lost = common.seed_recipe_features(
                examples, tokenizer, args.reference_max_length, with_labels=True)
            setup_s = time.perf_counter() - t0

            # kqa's setup first: its features feed the dynamic-padding Trainer run; it trains last.
            recipe, initial = setup_kqa(args, model_dir, train_files, work)
            logging.getLogger("kqa").setLevel(logging.WARNING)  # the recipe's setup configures logging
            kqa_features = recipe.train_features
            kqa_report = f"{len(examples)} examples -> {len(kqa_features)} windows"
            pad_multiple = 8 if args.bf16 else None
            runs = [(
                "transformers.Trainer, common recipe", f"seed recipe ({len(reference_features)} rows)",
                f"max_length {args.reference_max_length}", reference_features, default_data_collator,
            ), (
                "transformers.Trainer, dynamic padding", f"kqa ({len(kqa_features)} windows)",
                "DataCollatorWithPadding", kqa_features,
                DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple),
            )]
            rows, optim = [], None
            for name, features, padding, dataset, collator in runs:
                recorder, train_s, optim = run_trainer(args, model_dir, dataset, collator, initial, work, name)
                rows.append(summarise(name, features, padding, recorder, train_s, args.batch_size, args.steps,
                                      n_params, args.peak_tflops))
            kqa_recorder, kqa_s = train_kqa(recipe)
            rows.append(summarise("kqa.loop.QATrainingRecipe", f"kqa ({len(kqa_features)} windows)",
                                  "QACollator (longest in batch)", kqa_recorder, kqa_s, args.batch_size,
                                  args.steps, n_params, args.peak_tflops))
        finally:
            if previous_cache_dir is None:
                os.environ.pop("KQA_CACHE_DIR", None)
            else:
                os.environ["KQA_CACHE_DIR"] = previous_cache_dir

    reference = rows[0]
    for row in rows:
        row["speedup"] = reference["s_per_step"] / row["s_per_step"]
        row["non_pad_speedup"] = row["non_pad_tokens_per_s"] / reference["non_pad_tokens_per_s"]

    machine = common.machine_info()
    settings = common.settings_from_args(args)
    settings.update({
        "device": "cuda" if torch.cuda.is_available() else "cpu", "train_examples": len(examples),
        "files": per_file, "non_embedding_parameters": n_params, "vocab_size_trained": len(tokenizer),
        "kqa_features": len(kqa_features), "reference_features": len(reference_features),
        "reference_lost_answers": reference_lost, "trainer_optim": str(optim),
    })
    common.print_header(machine, {k: v for k, v in settings.items() if k != "files"})
    print(f"data: {kqa_report} (kqa, stride {args.doc_stride}); the common recipe keeps one "
          f"{args.reference_max_length}-token row per example and loses {reference_lost} answers to truncation "
          f"(setup {setup_s:.1f} s, not timed)")
    print(f"model: random-init BERT, {n_params / 1e6:.1f}M non-embedding parameters; identical initial weights "
          f"checked; {args.steps} optimizer steps of batch {args.batch_size}; throughput over steps 2..{args.steps - 1}")
    columns = [
        ("recipe", "recipe", ""), ("padding", "padding", ""), ("train_s", "train() s", ".2f"),
        ("s_per_step", "s/step", ".3f"), ("samples_per_s", "samples/s", ".1f"),
        ("non_pad_tokens_per_s", "non-pad tok/s", ",.0f"), ("padded_tokens_per_s", "padded tok/s", ",.0f"),
        ("pad_fraction", "pad share", ".1%"), ("speedup", "step speed-up", ".2f"),
    ]
    columns.append(("model_tflops_per_s", "model TFLOP/s", ".3f"))
    if args.peak_tflops:
        columns.append(("mfu", "MFU", ".1%"))
    common.print_table(rows, columns)
    print("model TFLOP/s = 6 x non-embedding parameters x padded tokens / s (attention's own FLOPs not counted)")
    common.write_json(args.out, machine=machine, settings=settings, results=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
