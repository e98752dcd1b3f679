"""Profile one training step (forward + backward) of a real encoder with attention dropout on and off:
which scaled-dot-product-attention kernel torch runs in each case, the step time, and where the time
goes (a torch.profiler table of the top operators).

On CPU, torch's fused SDPA kernel (`_scaled_dot_product_flash_attention_for_cpu`) has no dropout: a
non-zero `dropout_p` sends attention to the unfused "math" path, which materialises the
[batch, heads, seq, seq] probabilities, a dropout mask and their gradients. This script measures what
that costs and is the evidence behind kqa's `attention_dropout: auto` (docs/training.md).

    python benchmarks/bench_attention.py --model models/e5-small --out results.json

Each setting is timed in its own fresh model (same weights), interleaved over `--rounds`, medians
reported. The batch is `--batch-size` rows of `--seq-length` tokens of which `--real-tokens` are real
(the rest padding, as a length-grouped batch of long windows has).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

SDPA_KERNELS = {  # profiler op name -> what it is
    "aten::_scaled_dot_product_flash_attention_for_cpu": "fused (flash, CPU)",
    "aten::_scaled_dot_product_attention_math": "math (unfused)",
    "aten::_scaled_dot_product_flash_attention": "fused (flash, CUDA)",
    "aten::_scaled_dot_product_efficient_attention": "fused (memory-efficient, CUDA)",
    "aten::_scaled_dot_product_cudnn_attention": "fused (cuDNN)",
}


def build_model(args, attention_dropout: float):
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import tiny_bert_config

    if args.model:
        model = QuestionAnsweringModel.from_backbone(args.model, attention_dropout=attention_dropout)
    else:  # a random BERT of the requested shape (tests, machines without the backbone)
        config = tiny_bert_config(
            **common.bert_shape(args),
            max_position_embeddings=512,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=attention_dropout,
        )
        torch.manual_seed(args.seed)
        model = QuestionAnsweringModel.from_config(config)
    return model.train()


def make_batch(args, vocab_size: int):
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(5, vocab_size, (args.batch_size, args.seq_length), generator=generator)
    mask = torch.zeros_like(ids)
    mask[:, : args.real_tokens] = 1
    ids = ids * mask
    starts = torch.randint(0, args.real_tokens, (args.batch_size,), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "start_positions": starts, "end_positions": starts}


def step(model, batch, bf16: bool = False) -> None:
    """Forward (under torch.autocast(bfloat16) with `bf16`, as Accelerate runs mixed precision) and backward."""
    import torch

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def sdpa_kernel(model, batch, bf16: bool) -> str:
    """The SDPA kernel(s) a training step ran, from the profiler's operator names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, batch, bf16)
    names = {event.key for event in prof.key_averages()}
    return ", ".join(label for op, label in SDPA_KERNELS.items() if op in names) or "none"


def profile_table(model, batch, top: int, bf16: bool) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, batch, bf16)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an encoder (directory or hub name); default: a random BERT")
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.1, 0.0], help="attention dropout values")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--real-tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per setting (interleaved)")
    parser.add_argument("--profile-top", type=int, default=12, help="rows of the operator table (0: none)")
    common.add_bert_shape_arguments(parser)
    parser.add_argument("--bf16", action="store_true", help="forward under torch.autocast(bfloat16) (fp32 weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 0 < args.real_tokens <= args.seq_length:
        parser.error("--real-tokens must be in (0, --seq-length]")

    import torch

    machine, settings = common.machine_info(), common.settings_from_args(args)
    if args.model:  # the random-BERT shape flags do not apply
        for key in ("vocab_size", "hidden_size", "layers", "heads", "intermediate_size"):
            settings.pop(key, None)
    common.print_header(machine, settings)
    models = {p: build_model(args, p) for p in args.dropouts}
    batch = make_batch(args, next(iter(models.values())).config.vocab_size)
    for model in models.values():  # warm-up: allocator, kernels, first-call dispatch
        step(model, batch, args.bf16)
    times: dict[float, list[float]] = {p: [] for p in args.dropouts}
    for _ in range(args.rounds):
        for p, model in models.items():
            t0 = time.perf_counter()
            step(model, batch, args.bf16)
            times[p].append(time.perf_counter() - t0)
    rows = []
    for p, model in models.items():
        rows.append(
            {
                "attention_dropout": p,
                "sdpa_kernel": sdpa_kernel(model, batch, args.bf16),
                "step_s": common.median(times[p]),
                "min_s": min(times[p]),
                "max_s": max(times[p]),
            }
        )
    reference = rows[0]["step_s"]
    for row in rows:
        row["speed_up"] = reference / row["step_s"]
    common.print_table(
        rows,
        [
            ("attention_dropout", "attention dropout", ".2f"),
            ("sdpa_kernel", "SDPA kernel", ""),
            ("step_s", "fwd+bwd s (median)", ".2f"),
            ("min_s", "min s", ".2f"),
            ("max_s", "max s", ".2f"),
            ("speed_up", "speed-up", ".2f"),
        ],
        title=f"batch {args.batch_size} x {args.seq_length} tokens ({args.real_tokens} real), "
        f"{args.rounds} rounds, torch threads {torch.get_num_threads()}{', bf16 autocast' if args.bf16 else ''}",
    )
    tables = {}
    if args.profile_top:
        for p, model in models.items():
            tables[str(p)] = profile_table(model, batch, args.profile_top, args.bf16)
            print(f"\n## torch.profiler, attention dropout {p}: top {args.profile_top} operators by self CPU time")
            print(tables[str(p)])
    common.write_json(args.out, machine=machine, settings=settings, rows=rows, times=times, profiles=tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
