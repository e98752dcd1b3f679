"""Benchmark `kqa index`'s embedding over processes (kqa.retrieval.sharding): one process vs
`accelerate launch --multi_gpu --num_processes N`, passages/s of the embedding stage, and the largest
difference between their embeddings.

The corpus is the data directory's SQuAD contexts, repeated as distinct documents up to `--passages`
(one .jsonl file). The embedder is a random BERT of multilingual-e5-small's shape with a WordPiece
tokenizer trained on the passages (`bench_embedder.random_encoder`), or `--embedding-model DIR`.
Both runs are real `kqa index` commands with `--method dense` (no BM25: the embedding is what is
sharded); the seconds are the manifest's `build_seconds.embed` (for N processes: from the first
barrier to the merged array, waits included) and the command's wall time (process start-up and model
loading included). Without GPUs the N processes share the CPU (`OMP_NUM_THREADS` per process, see
docs/retrieval.md); on GPUs each takes one.

    python benchmarks/bench_sharded_index.py --processes 2 --out sharded.json      # 20,000 passages
    python benchmarks/bench_sharded_index.py --smoke                               # tiny, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

from kqa.retrieval.store import files_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(passages: list[str], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(passages):
            f.write(json.dumps({"id": f"p{i}", "text": text}, ensure_ascii=False) + "\n")
    return path


def run_index(launcher: list[str], corpus: Path, model: Path, out: Path, args) -> dict:
    command = [*launcher, "-m", "kqa", "index", "--corpus", str(corpus), "--output_dir", str(out)]
    command += ["--method", "dense", "--embedding_model", str(model), "--disable_tqdm"]
    command += ["--embedding_batch_size", str(args.batch_size), "--embedding_chunk_size", str(args.chunk_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((files_dir(out) / "index.json").read_text(encoding="utf-8"))
    return {"command": " ".join(command), "embed_s": manifest["build_seconds"]["embed"], "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default $KQA_DATA_DIR or ../shared/data")
    parser.add_argument("--embedding-model", type=Path, default=None, help="default: a random e5-small-shaped BERT")
    parser.add_argument("--passages", type=int, default=None, help="default 20,000 (--smoke: 256)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--smoke", action="store_true", help="a tiny encoder, chunks of 32, 256 passages by default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab_size, args.chunk_size = 300, 32
    args.passages = args.passages or (256 if args.smoke else 20000)
    import numpy as np
    from bench_embedder import corpus_passages, random_encoder
    from safetensors.numpy import load_file

    passages, distinct = corpus_passages(args.data_dir or common.default_data_dir(), args.passages)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes)]
    launch += ["--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no"]
    with tempfile.TemporaryDirectory(prefix="kqa-bench-sharded-") as tmp:
        work = Path(tmp)
        model = args.embedding_model or random_encoder(passages[:distinct], args, work)
        corpus = write_corpus(passages, work / "corpus.jsonl")
        rows = []
        for name, launcher in (("1 process", [sys.executable]), (f"{args.processes} processes", launch)):
            result = run_index(launcher, corpus, model, work / name.replace(" ", "-"), args)
            rows.append({"run": name, **result})
        embeddings = [
            load_file(str(files_dir(work / r["run"].replace(" ", "-")) / "passages.safetensors"))["embeddings"]
            for r in rows
        ]
    count = embeddings[0].shape[0]
    for row in rows:
        row.update(passages=count, passages_per_s=count / row["embed_s"], speedup=rows[0]["embed_s"] / row["embed_s"])
    difference = float(np.abs(embeddings[0] - embeddings[1]).max())
    machine = common.machine_info()
    settings = common.settings_from_args(args)
    common.print_header(machine, settings)
    common.print_table(
        rows,
        [
            ("run", "run", ""),
            ("passages", "passages", ","),
            ("embed_s", "embed s", ".2f"),
            ("passages_per_s", "passages/s", ",.1f"),
            ("speedup", "vs 1 process", ".2f"),
            ("wall_s", "command s", ".1f"),
        ],
        title=f"kqa index --method dense, 1 process vs {args.processes} (max |embedding difference| {difference:.2e})",
    )
    for row in rows:
        print(f"{row['run']}: {row['command']}")
    common.write_json(args.out, machine=machine, settings=settings, results=rows, max_difference=difference)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
