"""Benchmark the embedder of `kqa index` (`kqa.retrieval.dense.Embedder`): passages per second.

The passages are those `kqa index` cuts from the data directory's SQuAD files (`kqa.retrieval.corpus`),
repeated up to `--passages`. The encoder is a random-init BERT of multilingual-e5-small's shape (12
layers x 384, 1,536 intermediate) with a WordPiece tokenizer trained on the passages (e5's own 250k
XLM-R vocabulary changes only the embedding lookup, not the speed), or `--embedding-model DIR`. It runs as
`kqa index` runs it: float32 weights, batches of `--batch-size` passages sorted by length, on the GPU when
there is one.

    python benchmarks/bench_embedder.py --out embedder.json           # a GPU: 20,000 passages
    python benchmarks/bench_embedder.py --smoke --out embedder.json   # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

E5_SMALL = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 1536}
WARMUP_PASSAGES = 64


def corpus_passages(data_dir: Path, count: int) -> tuple[list[str], int]:
    """`count` passages (the corpus's, repeated); returns them and how many distinct ones there are."""
    from kqa.retrieval.corpus import load_corpus, split_corpus

    documents, _ = load_corpus(common.squad_files(data_dir))
    texts = [p.text for p in split_corpus(documents)]
    return (texts * math.ceil(count / len(texts)))[:count], len(texts)


def random_encoder(texts: list[str], args, work: Path) -> Path:
    import torch
    from transformers import BertModel

    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    tokenizer = build_wordpiece_tokenizer(texts, vocab_size=args.vocab_size)
    shape = E5_SMALL if not args.smoke else {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    shape = {**shape, "intermediate_size": 4 * shape["hidden_size"]}
    torch.manual_seed(args.seed)
    BertModel(tiny_bert_config(max(args.vocab_size, len(tokenizer)), **shape), add_pooling_layer=False).save_pretrained(
        work / "embedder"
    )
    tokenizer.save_pretrained(work / "embedder")
    return work / "embedder"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default $KQA_DATA_DIR or ../shared/data")
    parser.add_argument("--embedding-model", type=Path, default=None, help="default: a random e5-small-shaped BERT")
    parser.add_argument("--passages", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32, help="passages per batch (kqa index's default)")
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--smoke", action="store_true", help="a tiny encoder and 64 passages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.passages, args.vocab_size = 64, 300
    import tempfile

    from bench_training import quiet_libraries, synchronize

    from kqa.retrieval.dense import Embedder

    quiet_libraries()
    passages, distinct = corpus_passages(args.data_dir or common.default_data_dir(), args.passages)
    with tempfile.TemporaryDirectory(prefix="kqa-bench-embedder-") as tmp:
        model = args.embedding_model or random_encoder(passages[:distinct], args, Path(tmp))
        embedder = Embedder.from_pretrained(model, batch_size=args.batch_size)
        embedder.embed_passages(passages[:WARMUP_PASSAGES])  # CUDA context, cuBLAS handles, allocator
        synchronize()
        t0 = time.perf_counter()
        embeddings = embedder.embed_passages(passages)
        synchronize()
        seconds = time.perf_counter() - t0
    lengths = [len(p) for p in passages]
    result = {
        "passages": len(passages),
        "distinct_passages": distinct,
        "mean_chars": sum(lengths) / len(lengths),
        "seconds": seconds,
        "passages_per_s": len(passages) / seconds,
        "device": str(embedder.model.device),
        "dtype": str(embedder.model.dtype),
        "dimension": int(embeddings.shape[1]),
        "model": str(args.embedding_model or ("random-init, tiny" if args.smoke else "random-init, e5-small shape")),
    }
    machine = common.machine_info()
    settings = common.settings_from_args(args)
    common.print_header(machine, settings)
    common.print_table(
        [result],
        [
            ("passages", "passages", ","),
            ("mean_chars", "mean chars", ".0f"),
            ("device", "device", ""),
            ("dtype", "dtype", ""),
            ("seconds", "s", ".2f"),
            ("passages_per_s", "passages/s", ",.1f"),
        ],
        title=f"kqa index's embedder ({result['model']}), batches of {args.batch_size}",
    )
    common.write_json(args.out, machine=machine, settings=settings, results=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
