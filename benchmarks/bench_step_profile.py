"""Where a training step's time goes, and what the machine is: a `torch.profiler` table of the top kernels of
kqa's training step (forward with the span loss, backward, gradient clipping, fused AdamW) on a
BERT-base-shaped model, with the versions that set the speed and `nvidia-smi`'s view of the GPU.

The step is the recipe's (`QATrainingRecipe.train`: `model(**batch).loss`, backward, `clip_grad_norm_`, the
optimizer `kqa.training.optim.build_optimizer` builds), on full windows of `--seq-length` random tokens in
bf16 autocast (Accelerate's mixed precision), after `--warmup` untimed steps. A bf16 matrix product of
`--matmul-size` cubed gives the ceiling the model's TFLOP/s can be read against (the datasheet's
989 TFLOP/s dense bf16 for an H100 SXM is not reached by any product: this machine's own is).

    python benchmarks/bench_step_profile.py --bert-base --bf16 --batch-size 64 --out profile.json   # a GPU
    python benchmarks/bench_step_profile.py --smoke --out profile.json                             # CPU
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402
from bench_training import BERT_BASE, non_embedding_parameters, synchronize  # noqa: E402

NVIDIA_SMI_QUERY = "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw,power.limit"
TOP_KERNELS = 20
MATMUL_REPEATS = 10


def versions() -> dict:
    import torch

    info = {name: common._version(name) for name in ("torch", "transformers", "accelerate", "datasets", "triton")}
    info["cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def nvidia_smi() -> dict:
    """`nvidia-smi` (the whole screen) and its CSV query of the fields that set the speed; None without one."""
    if shutil.which("nvidia-smi") is None:
        return {"available": False}
    run = lambda *a: subprocess.run(["nvidia-smi", *a], capture_output=True, text=True, timeout=30).stdout  # noqa: E731
    return {
        "available": True,
        "screen": run(),
        "query": run(f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv"),
    }


def matmul_tflops(size: int, device) -> float:
    """bf16 (fp32 on the CPU) matrix product of size^3 on random data: the device's practical peak."""
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize()
    t0 = time.perf_counter()
    for _ in range(MATMUL_REPEATS):
        a @ b
    synchronize()
    return 2 * size**3 * MATMUL_REPEATS / (time.perf_counter() - t0) / 1e12


def training_step(args):
    """The model, a batch on its device and one step of kqa's loop as a function."""
    import torch

    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import tiny_bert_config
    from kqa.training.config import TrainConfig
    from kqa.training.optim import build_optimizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = dict(BERT_BASE) if args.bert_base else common.bert_shape(args)
    torch.manual_seed(args.seed)
    model = QuestionAnsweringModel.from_config(tiny_bert_config(**shape)).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(train_files=["unused.json"]))
    size = (args.batch_size, args.seq_length)
    batch = {
        "input_ids": torch.randint(5, shape["vocab_size"], size, device=device),
        "attention_mask": torch.ones(size, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(size, dtype=torch.long, device=device),
        "start_positions": torch.randint(0, args.seq_length, size[:1], device=device),
        "end_positions": torch.randint(0, args.seq_length, size[:1], device=device),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step, device


def profile_steps(step, steps: int, device) -> tuple[object, float]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize()
    return prof, (time.perf_counter() - t0) / steps


def top_kernels(prof, device, steps: int) -> tuple[str, list[dict]]:
    """The profiler's table and its rows as JSON: device kernels by self time on a GPU, operators on the CPU."""
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    table = averages.table(sort_by=sort, row_limit=TOP_KERNELS, max_name_column_width=70)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(averages, key=lambda e: getattr(e, attr, 0.0), reverse=True)[:TOP_KERNELS]
    total = sum(getattr(e, attr, 0.0) for e in averages) or 1.0
    rows = [
        {
            "name": e.key,
            "calls_per_step": e.count / steps,
            "ms_per_step": getattr(e, attr, 0.0) / 1e3 / steps,
            "share": getattr(e, attr, 0.0) / total,
        }
        for e in events
    ]
    return table, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bert-base", action="store_true", help="klue/bert-base's shape; random weights")
    common.add_bert_shape_arguments(parser, what="random model (without --bert-base)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as Accelerate's mixed precision")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the datasheet's peak, for MFU")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab_size, args.hidden_size, args.layers, args.heads, args.intermediate_size = 300, 32, 1, 2, 64
        args.batch_size, args.seq_length, args.warmup, args.steps, args.matmul_size = 2, 64, 1, 1, 256
        args.bert_base = False

    model, step, device = training_step(args)
    for _ in range(args.warmup):
        step()
    prof, s_per_step = profile_steps(step, args.steps, device)
    table, rows = top_kernels(prof, device, args.steps)
    tokens = args.batch_size * args.seq_length
    model_tflops = 6.0 * non_embedding_parameters(model) * tokens / s_per_step / 1e12
    result = {
        "versions": versions(),
        "nvidia_smi": nvidia_smi(),
        "device": str(device),
        "s_per_step_profiled": s_per_step,
        "tokens_per_step": tokens,
        "model_tflops_per_s_profiled": model_tflops,
        "matmul_tflops_per_s": matmul_tflops(args.matmul_size, device),
        "peak_tflops": args.peak_tflops,
        "mfu_profiled": model_tflops / args.peak_tflops if args.peak_tflops else None,
        "top_kernels": rows,
        "table": table,
    }
    machine = common.machine_info()
    settings = common.settings_from_args(args)
    common.print_header(machine, settings)
    smi = result["nvidia_smi"]
    print(smi["query"] if smi["available"] else "nvidia-smi: not found")
    print(f"\ntop {TOP_KERNELS} by self time, {args.steps} profiled steps of {args.batch_size} x {args.seq_length}:")
    print(table)
    print(
        f"step {s_per_step * 1e3:.1f} ms under the profiler; model {model_tflops:.1f} TFLOP/s; "
        f"bf16 matmul {args.matmul_size}^3: {result['matmul_tflops_per_s']:.1f} TFLOP/s"
    )
    common.write_json(args.out, machine=machine, settings=settings, results=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
