"""One command-line dialect for every `kqa` command, `train.py` and `evaluate.py` (docs/cli.md):

- flags are snake_case, named as the setting they set (`--max_seq_length`, `--doc_stride`);
- a boolean is `--flag` (true) or `--flag true|false` (also yes/no, on/off, 1/0);
- what a command writes is `--output_dir` (a directory) or `--output_file` (a file);
- progress bars are turned off by `--disable_tqdm`;
- a batch size says what it counts: `--per_device_eval_batch_size` (windows, evaluation),
  `--model_batch_size` (windows per forward pass when answering), `--micro_batch_size` (questions per
  model call of the server), `--embedding_batch_size` (passages per embedding batch);
- a flag with a fixed set of values lists them (`--backend {torch,torch-int8,onnx}`).

Earlier spellings keep working for now: each prints a one-line note naming the new one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def parse_column_mapping_flag(text: str) -> dict[str, str]:
    """`--column_mapping id=qid,context=passage` (`kqa.columns.parse_column_mapping`), its errors as argparse's."""
    from kqa.columns import parse_column_mapping

    try:
        return parse_column_mapping(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_bool_flag(parser: argparse.ArgumentParser, name: str, *, default: bool = False, help: str = "") -> None:
    """`--name` alone is true; `--name true|false` says which."""
    parser.add_argument(
        f"--{name}",
        nargs="?",
        const=True,
        default=default,
        type=parse_bool,
        metavar="{true,false}",
        help=f"{help} (default {str(default).lower()})".strip(),
    )


class _DeprecatedSpelling(argparse.Action):
    """An earlier spelling of a flag: sets the new flag's destination and says so on stderr."""

    def __init__(self, option_strings, dest, *, new: str, value: Any = None, **kwargs):
        self.new, self.value = new, value
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.value if self.nargs == 0 else values)


def add_deprecated_spelling(
    parser: argparse.ArgumentParser, old: str, new: str, *, dest: str | None = None, value: Any = None, **kwargs
) -> None:
    """`old` (e.g. "--out") keeps working as `new` (e.g. "--output_dir"), with a note. A flag that took
    no value (`store_true`) gives `nargs=0` and the `value` it stood for."""
    dest = dest or new.lstrip("-").split(" ")[0]
    parser.add_argument(
        old,
        dest=dest,
        action=_DeprecatedSpelling,
        new=new,
        value=value,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        **kwargs,
    )


def add_renamed_flag(parser: argparse.ArgumentParser, new: str, old: str, *, required: bool = False, **kwargs) -> None:
    """`new` (with argparse's `kwargs`) and its earlier spelling `old`, which sets the same value with a
    note. A required flag is satisfied by either spelling."""
    container = parser.add_mutually_exclusive_group(required=True) if required else parser
    container.add_argument(new, **kwargs)
    extra = {k: kwargs[k] for k in ("type", "nargs") if k in kwargs}
    add_deprecated_spelling(container, old, new, **extra)


def add_prediction_override_flags(parser: argparse.ArgumentParser) -> None:
    """The window and decoding settings saved with a model, each overridable when it is loaded
    (`kqa.prediction.OVERRIDABLE_SETTINGS`; default: as saved)."""
    import dataclasses
    import typing

    from kqa.boundaries import BOUNDARY_MODES
    from kqa.prediction import OVERRIDABLE_SETTINGS, SETTING_SECTIONS

    types = {}
    for section in SETTING_SECTIONS.values():
        hints = typing.get_type_hints(section)
        types.update({f.name: hints[f.name] for f in dataclasses.fields(section)})
    choices = {"answer_boundaries": BOUNDARY_MODES}
    for name in OVERRIDABLE_SETTINGS:
        parser.add_argument(
            f"--{name}", type=types[name], choices=choices.get(name), help="default: as saved with the model"
        )


# The flags of add_hub_flags, each the keyword of the same name of `QuestionAnswerer.from_pretrained`,
# `QuestionAnsweringModel.from_pretrained` and `evaluate_model` (`hub_options` passes them on).
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "allow_bin_weights")


def add_hub_flags(parser: argparse.ArgumentParser) -> None:
    """How a model given as a hub id (`org/name`) is fetched (kqa.hub.resolve_model_dir), and the opt-in to
    pickle-based `pytorch_model.bin` weights. A local directory ignores the hub flags."""
    parser.add_argument("--revision", help="hub id: a branch, tag or commit (default: main)")
    parser.add_argument(
        "--token",
        help="hub id: an access token for a private or gated repository (default: huggingface_hub's own, "
        "HF_TOKEN or `hf auth login`; the environment keeps it out of the process list)",
    )
    parser.add_argument("--cache_dir", help="hub id: the hub cache to use (default: huggingface_hub's, HF_HUB_CACHE)")
    add_bool_flag(
        parser, "local_files_only", help="hub id: look in the hub cache only, never online (as HF_HUB_OFFLINE=1)"
    )
    add_bool_flag(
        parser,
        "allow_bin_weights",
        help="load pytorch_model.bin weights when a model has no safetensors (torch.load with weights_only=True; "
        "only for files you trust)",
    )


def hub_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments the flags of `add_hub_flags` give a `from_pretrained`."""
    return {name: getattr(args, name) for name in HUB_OPTIONS}


def add_model_flags(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """`--model` (a directory or a hub id, with the flags of `add_hub_flags`), `--device`,
    `--trust_remote_code` and, where the model answers questions, `--backend` and `--int8_drift`."""
    parser.add_argument(
        "--model", required=True, help="kqa model directory (e.g. outputs/kqa/best) or hub id (org/name)"
    )
    add_hub_flags(parser)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    add_bool_flag(parser, "trust_remote_code", help="allow an encoder whose code lives beside its weights")
    if backend:
        from kqa.inference.runtimes import BACKENDS, DRIFT_ACTIONS

        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            help="torch (default), torch-int8 (CPU) or onnx (CPU; the default for a `kqa export` directory)",
        )
        parser.add_argument(
            "--int8_drift",
            choices=DRIFT_ACTIONS,
            default=DRIFT_ACTIONS[0],
            help="an int8 export whose probe logits differ on this CPU more than where it was "
            "exported: warn (default), error (refuse to load) or ignore",
        )
