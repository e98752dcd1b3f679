"""What each `kqa` command does, given its parsed flags (`kqa.cli.parser` builds them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kqa.cli.questions import read_questions


def _load_answerer(args: argparse.Namespace, **settings):
    """The QuestionAnswerer the flags of `kqa.flags.add_model_flags` name (model and its hub flags, device,
    backend, trust_remote_code, int8_drift), with `settings` such as batch_size and prediction overrides."""
    from kqa.flags import hub_options
    from kqa.inference import QuestionAnswerer

    return QuestionAnswerer.from_pretrained(
        args.model,
        device=args.device,
        backend=args.backend,
        trust_remote_code=args.trust_remote_code,
        int8_drift=args.int8_drift,
        **hub_options(args),
        **settings,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from kqa.prediction import OVERRIDABLE_SETTINGS

    if not args.input and not (args.question and args.context):
        raise SystemExit("predict: give --question and --context, or --input FILE")
    rows = read_questions(Path(args.input)) if args.input else None  # a bad file fails before the model loads
    overrides = {k: getattr(args, k) for k in OVERRIDABLE_SETTINGS}
    qa = _load_answerer(args, batch_size=args.model_batch_size, **overrides)
    null_options = {"handle_impossible_answer": args.handle_impossible_answer}  # the threshold: an override above
    if rows is not None:
        predictions = qa.predict_rows(rows, top_k=args.top_k, **null_options)
        if args.top_k == 1:
            result = {k: p.text for k, p in predictions.items()}  # the official submission format ("" = null)
        else:
            result = {
                k: [a.to_dict() for a in qa.answers_of(p, args.top_k, qa.calibrator)] for k, p in predictions.items()
            }
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
    from kqa.offline.vocab import read_corpus_texts
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    texts = read_corpus_texts(args.text_from)  # contexts and questions; errors name the file and record
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


def cmd_make_negatives(args: argparse.Namespace) -> int:
    """The data file with unanswerable questions added (`kqa.negatives`), written as SQuAD 2.0 JSON."""
    from kqa.data import load_data_file
    from kqa.negatives import NegativeSettings, add_negatives, write_squad_json

    if Path(args.output_file).resolve() == Path(args.data_file).resolve():
        raise ValueError(f"{args.output_file}: the output file must not be the data file")
    settings = NegativeSettings(ratio=args.negative_ratio, kind=args.negative_kind, seed=args.seed)
    examples, _ = load_data_file(args.data_file)
    examples, report = add_negatives(examples, settings, source=str(args.data_file))
    write_squad_json(examples.to_list(), args.output_file)
    print(f"{report.summary()} → {args.output_file}")
    for line in report.problem_lines():
        print(line, file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """An HTTP server (JSON API, web page, micro-batching) for a saved model: see kqa.serving, docs/serving.md."""
    from kqa.extras import require
    from kqa.serving.settings import BatchingSettings, ServerLimits

    require("serve")
    from kqa.serving.app import serve

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
        from kqa.retrieval.index import open_index

        retriever = open_index(args.index, device=args.device)
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
    from kqa.extras import require
    from kqa.flags import hub_options

    require("onnx")
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
            **hub_options(args),
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
            "int8 moves the logits, and differently on CPUs with and without VNNI: check EM/F1 on your dev set "
            "on the CPU you serve from (benchmarks/bench_int8.py) before serving it; where answers must not "
            "depend on the CPU, serve the fp32 export (exact everywhere). The export keeps probe inputs with "
            "their fp32 logits: loading it on another CPU measures the difference again and warns if it grew "
            "(--int8_drift)",
            file=sys.stderr,
        )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """A corpus (folders and files) → a saved retrieval index (kqa.retrieval, docs/retrieval.md). Under
    accelerate launch the passages are embedded in resumable chunks over the processes
    (kqa.retrieval.sharding); the main process builds and saves the index, the others only embed."""
    import time

    from kqa.retrieval import Embedder, PassageSettings, Retriever, RetrieverSettings, load_corpus, sharding

    if args.update or args.delete:
        return _update_index(args)
    if not args.corpus:
        raise ValueError("index: give --corpus (or --delete DOC_ID … to remove documents from an index)")
    settings = RetrieverSettings(
        method=args.method,
        analyzer=None if args.method == "dense" else args.analyzer,
        fusion=args.fusion,
        ann=args.ann,
        ann_threshold=args.ann_threshold,
    )
    passage_settings = PassageSettings(max_chars=args.passage_chars, overlap_chars=args.overlap_chars)
    start = time.perf_counter()
    state = sharding.distributed_state() if sharding.launched_by_accelerate() else None
    is_main = state is None or state.is_main_process
    if not is_main and not settings.uses_dense:
        return 0  # nothing to share: the main process builds the whole index
    documents, report = load_corpus(args.corpus, max_file_bytes=int(args.max_file_mb * 2**20), strict=args.strict)
    if is_main:
        _print_corpus_report(report, Path(args.output_dir))
    embedder = None
    if settings.uses_dense:  # the model loads before the long analysis, so a wrong name fails at once
        embedder = Embedder.from_pretrained(
            args.embedding_model,
            device=args.device if state is None else sharding.process_device(args.device, state),
            batch_size=args.embedding_batch_size,
            trust_remote_code=args.trust_remote_code,
        )
    build = Retriever.build
    if args.backend == "milvus":  # the same passages, terms and embeddings, in Milvus collections
        from functools import partial

        from kqa.retrieval.milvus_store import MilvusStore

        if not args.milvus_uri:
            raise ValueError("--backend milvus needs --milvus_uri (a local .db file, or http://host:19530)")
        if state is not None:
            raise ValueError("--backend milvus embeds in one process: run kqa index without accelerate launch")
        build = partial(MilvusStore.build, uri=args.milvus_uri, collection=args.milvus_collection)
    sharded = None
    if state is not None and settings.uses_dense:
        sharded = _embed_sharded(args, embedder, documents, passage_settings, state)
        if not is_main:
            return 0  # its chunks are written; the main process merged them
    extra = {} if sharded is None else {"passage_embeddings": sharded.embeddings}
    retriever = build(
        documents,
        settings,
        embedder=embedder,
        passage_settings=passage_settings,
        corpus_report=report,
        show_progress=not args.disable_tqdm,
        **extra,
    )
    if sharded is not None:
        retriever.info.build_seconds["embed"] = sharded.seconds
    out = retriever.save(args.output_dir)
    if sharded is not None:
        for other in sharding.remove_work_dir(sharded.report.work_dir):
            print(f"note: {other} holds chunks of another corpus or model, not used; remove it", file=sys.stderr)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    search_kind = "Milvus FLAT" if args.backend == "milvus" else getattr(retriever.dense, "search_kind", None)
    dense_search = f" ({search_kind} dense search)" if retriever.dense is not None else ""
    print(
        f"wrote {out}: {len(retriever.documents)} documents, {len(retriever.passages)} passages, method "
        f"{settings.method}{dense_search}, {size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    if args.backend == "milvus":
        retriever.close()  # a Milvus Lite file stays locked while open
    return 0


def _update_index(args: argparse.Namespace) -> int:
    """`kqa index --update` / `--delete`: change an existing index (the default one is saved as a new
    generation; a Milvus one is changed in its collections and its manifest rewritten)."""
    import time

    from kqa.retrieval import load_corpus
    from kqa.retrieval.index import open_index
    from kqa.retrieval.milvus_store import MilvusStore

    if args.update == bool(args.delete):
        raise ValueError("index: give either --update (with --corpus) or --delete DOC_ID …, not both")
    if args.update and not args.corpus:
        raise ValueError("index --update: give --corpus, the folders and files the index is to hold now")
    for flag in _ignored_build_flags(args):  # the index keeps its own settings and embedding model
        print(f"note: {flag} is a setting of a new index; --update / --delete keep the index's own", file=sys.stderr)
    start = time.perf_counter()
    retriever = open_index(args.output_dir, device=args.device)
    milvus = isinstance(retriever, MilvusStore)  # changed in place in its collections: no generations
    try:
        if args.delete:
            report = retriever.delete(args.delete)
        else:
            documents, corpus_report = load_corpus(
                args.corpus, max_file_bytes=int(args.max_file_mb * 2**20), strict=args.strict
            )
            _print_corpus_report(corpus_report, Path(args.output_dir))
            report = retriever.update(documents, show_progress=not args.disable_tqdm)
            if milvus:
                retriever.corpus_report = corpus_report.to_dict()
            else:
                retriever.info.corpus_report = corpus_report.to_dict()
        out = retriever.save(args.output_dir)
        where = f"Milvus collection {retriever.collection!r}" if milvus else f"generation {out.name}"
        print(
            f"updated {args.output_dir} ({where}): {report.summary()}; now "
            f"{len(retriever.documents)} documents, {len(retriever.passages)} passages, "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    finally:
        if milvus:
            retriever.close()  # a Milvus Lite file stays locked while open
    return 0


def _ignored_build_flags(args: argparse.Namespace) -> list[str]:
    """The flags that shape a new index (`build_flag_defaults`, set by the parser) given another value."""
    defaults = getattr(args, "build_flag_defaults", {})
    return [f"--{name}" for name, default in defaults.items() if getattr(args, name) != default]


def _print_corpus_report(report, output_dir: Path) -> None:
    print(f"corpus: {report.summary()}", file=sys.stderr)
    for reason in sorted({r for _, r in report.skipped if r.startswith("missing dependency")}):
        print(f"corpus: {reason}", file=sys.stderr)  # once, however many files it skipped
    for source, reason in report.skipped[:20]:
        print(f"  skipped {source}: {reason}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"  … and {len(report.skipped) - 20} more (all listed in {output_dir / 'index.json'})", file=sys.stderr)


def _embed_sharded(args, embedder, documents, passage_settings, state):
    """This process's share of the passage embeddings (kqa.retrieval.sharding): the merged embeddings
    on the main process, None on the others (and when there is no passage: Retriever.build says so)."""
    from kqa.retrieval import sharding, split_corpus

    threads = sharding.configure_cpu_threads(state)
    texts = [p.text for p in split_corpus(documents, passage_settings)]
    if not texts:
        return None
    result = sharding.embed_passages_sharded(
        embedder,
        texts,
        Path(args.output_dir) / sharding.WORK_DIR_NAME,
        state=state,
        chunk_size=args.embedding_chunk_size,
        cpu_threads=threads,
        show_progress=not args.disable_tqdm,
    )
    if result is not None:
        print(result.report.summary(), file=sys.stderr)
    return result


def cmd_ask(args: argparse.Namespace) -> int:
    """Retrieve passages from an index and read them with a saved model."""
    from kqa.retrieval import RetrieveAndRead, parse_filters
    from kqa.retrieval.index import open_index

    question = " ".join(args.question).strip()
    if not question:
        raise ValueError("the question is empty")
    filters = parse_filters(args.filter)  # a wrong --filter fails before anything loads
    retriever = open_index(args.index, method=args.method, device=args.device)
    qa = _load_answerer(args)
    pipeline = RetrieveAndRead(retriever, qa, passages=args.passages, rank_by=args.rank_by)
    result = pipeline.ask(question, top_k=args.top_k, score_threshold=args.score_threshold, filters=filters)
    if args.json:
        print(json.dumps(result.to_dict(with_passages=args.show_passages), indent=2, ensure_ascii=False))
        return 0
    if not result.passages:
        print("no answer: no passage of the index matches the question" + (" and --filter" if filters else ""))
    elif result.no_answer:
        print(
            f"no answer: the best answer's confidence {result.best_confidence:.2f} is below the threshold "
            f"{result.score_threshold:.2f} (--score_threshold)"
        )
    for i, a in enumerate(result.answers, 1):
        text = retriever.document(a.doc_id).text
        left, right = text[max(a.passage_start, a.start - 60) : a.start], text[a.end : min(a.passage_end, a.end + 60)]
        shown = " ".join(a.text.split())  # one line on the terminal (--json keeps the text as it is)
        confidence = "" if a.confidence is None else f"confidence {a.confidence:.2f}, "
        print(f"{i}. {shown}  ({confidence}p={a.probability:.2f}, span score {a.score:.2f})")
        where = f", {a.location}" if a.location else ""
        print(
            f"   {a.doc_id}{' — ' + a.title if a.title else ''} [{a.start}:{a.end}]{where}, "
            f"passage rank {a.retrieval_rank}"
        )
        print(f"   …{left}【{a.text}】{right}…".replace("\n", " "))
    if args.show_passages:
        print("passages:")
        for hit in result.passages:
            print(f"  {hit.rank}. {hit.passage.id} score {hit.score:.4f}: {hit.passage.text[:80]!r}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit a calibrator on a dev set and save it with the model (`kqa.cli.calibrate`)."""
    from kqa.cli.calibrate import run_calibrate

    return run_calibrate(args, _load_answerer)


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a saved model directory to the Hub (`kqa.publish.push_model_dir`: checked, a card written
    when missing, no pickles, no predictions)."""
    from kqa.publish import push_model_dir

    url = push_model_dir(
        Path(args.model),
        args.repo,
        private=args.private,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.model} to {args.repo}: {url}")
    return 0
