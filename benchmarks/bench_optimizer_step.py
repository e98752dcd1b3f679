"""Profile one training step of the benchmark model split into forward+backward and clip+optimizer, for
torch's for-each AdamW (`adamw_torch`) and its fused AdamW (`adamw_torch_fused`, kqa's default and
`transformers.Trainer`'s default on recent torch).

This is the profile behind the training-throughput comparison: the three loops share the model, so
what can differ per step is the optimizer, the batch composition and the loop's own bookkeeping.

    python benchmarks/bench_optimizer_step.py --out results.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402


def time_steps(optim: str, args) -> dict:
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import tiny_bert_config
    from kqa.training.config import TrainConfig
    from kqa.training.optim import build_optimizer

    config = tiny_bert_config(**common.bert_shape(args), max_position_embeddings=512)
    torch.manual_seed(args.seed)
    model = QuestionAnsweringModel.from_config(config)
    optimizer = build_optimizer(model, TrainConfig(train_files=["unused.json"], optim=optim, learning_rate=3e-5))
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_length), generator=generator)
    starts = torch.randint(0, args.seq_length, (args.batch_size,), generator=generator)
    forward_backward, clip_step = [], []
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        loss = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), start_positions=starts, end_positions=starts
        ).loss
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if step >= 2:  # the first steps allocate the optimizer state
            forward_backward.append(t1 - t0)
            clip_step.append(t2 - t1)
    fb, cs = common.median(forward_backward), common.median(clip_step)
    return {
        "optim": optim,
        "fused": bool(optimizer.defaults.get("fused")),
        "forward_backward_ms": fb * 1e3,
        "clip_optimizer_ms": cs * 1e3,
        "step_ms": (fb + cs) * 1e3,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per optimizer (medians reported)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--seq-length", type=int, default=224, help="kqa's mean padded window length on the shared data"
    )
    common.add_bert_shape_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    machine, settings = common.machine_info(), common.settings_from_args(args)
    common.print_header(machine, settings)
    # Interleaved twice, so that a slow phase of a shared machine does not land on one optimizer only.
    runs = [time_steps(optim, args) for _ in range(2) for optim in ("adamw_torch", "adamw_torch_fused")]
    rows = []
    for optim in ("adamw_torch", "adamw_torch_fused"):
        mine = [r for r in runs if r["optim"] == optim]
        row = {
            key: common.median([r[key] for r in mine])
            for key in ("forward_backward_ms", "clip_optimizer_ms", "step_ms")
        }
        rows.append({"optim": optim, "fused": mine[0]["fused"], "parameters_m": mine[0]["parameters_m"], **row})
    reference = rows[0]["step_ms"]
    for row in rows:
        row["speed_up"] = reference / row["step_ms"]
    common.print_table(
        rows,
        [
            ("optim", "optimizer", ""),
            ("fused", "fused", ""),
            ("parameters_m", "params (M)", ".1f"),
            ("forward_backward_ms", "fwd+bwd ms", ".1f"),
            ("clip_optimizer_ms", "clip+step ms", ".1f"),
            ("step_ms", "step ms", ".1f"),
            ("speed_up", "speed-up", ".2f"),
        ],
        title=f"median of {args.steps} steps x 2 runs, batch {args.batch_size} x {args.seq_length} tokens",
    )
    common.write_json(args.out, machine=machine, settings=settings, rows=rows, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
