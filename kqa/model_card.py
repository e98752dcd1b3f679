"""A saved model's card: `README.md` with the Hugging Face Hub's YAML metadata (language, license, datasets,
base model, pipeline tag, library, tags, a `model-index` with EM and F1 per dev set) and a body that says
what the model is, the settings it was trained with, its scores and how to load it.

`render_model_card(ModelCardInfo) -> str` is the whole card, built with `huggingface_hub`'s `ModelCardData`
and `EvalResult` (which check the model-index); `card_info_from_model_dir` reads what a saved directory says
about itself, for a directory saved without a card (`kqa push`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from kqa.hub import is_hub_id

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
PIPELINE_TAG = "question-answering"
LIBRARY_NAME = "kqa"
LANGUAGE = "ko"
TAGS = ("kqa", "question-answering", "extractive-qa", "korean", "korquad")
METRICS = (("exact_match", "EM"), ("f1", "F1"))  # (the Hub's metric id and the key of kqa's metrics, its name)


@dataclass(frozen=True)
class DevScore:
    """One validation set's scores at the saved step (×100, the official KorQuAD EM and character F1)."""

    name: str
    dataset: str
    """The hub dataset id, or the file name of a local set."""
    exact_match: float
    f1: float
    split: Optional[str] = None


@dataclass(frozen=True)
class ModelCardInfo:
    """What a card says. `base_model` and `license` are left out of the metadata when unknown."""

    model_name: str
    base_model: Optional[str] = None
    """The hub id of the encoder trained from (None when it was a local directory: `base_model_source`)."""
    base_model_source: Optional[str] = None
    license: Optional[str] = None
    datasets: tuple[str, ...] = ()
    dev_scores: tuple[DevScore, ...] = ()
    step: Optional[int] = None
    settings: dict[str, Any] = field(default_factory=dict)
    transformers_class: Optional[str] = None
    """The `*ForQuestionAnswering` class config.json names; None when the weights are not in its layout
    (`write_model_card` reads it from the directory)."""
    load_from: str = "<repo id or directory>"


def card_metadata(info: ModelCardInfo):
    """The card's YAML metadata as `huggingface_hub.ModelCardData`."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Extractive question answering",
            dataset_type=score.dataset,
            dataset_name=score.name,
            dataset_split=score.split,
            metric_type=metric,
            metric_name=name,
            metric_value=round(getattr(score, metric), 2),
        )
        for score in info.dev_scores
        for metric, name in METRICS
    ]
    return ModelCardData(
        language=[LANGUAGE],
        license=info.license,
        datasets=list(info.datasets) or None,
        base_model=info.base_model,
        pipeline_tag=PIPELINE_TAG,
        library_name=LIBRARY_NAME,
        tags=list(TAGS),
        model_name=info.model_name,
        eval_results=results or None,
    )


def render_model_card(info: ModelCardInfo) -> str:
    """The card's text: the metadata block, then the body."""
    from huggingface_hub import ModelCard

    # ModelCard parses the text back: a model-index that does not parse raises here, not on the Hub.
    return str(ModelCard(f"---\n{card_metadata(info).to_yaml()}\n---\n\n{_body(info)}"))


def write_model_card(directory: Path, info: ModelCardInfo) -> Path:
    """`README.md` in a saved model directory; whether it loads with `transformers` is read from the
    directory's own config.json."""
    path = Path(directory) / CARD_FILE
    info = replace(info, transformers_class=transformers_class_of(Path(directory)))
    path.write_text(render_model_card(info), encoding="utf-8")
    return path


def _body(info: ModelCardInfo) -> str:
    sections = [f"# {info.model_name}\n\n{_summary(info)}", _scores(info), _settings(info), _usage(info)]
    return "\n\n".join(section for section in sections if section) + "\n"


def _summary(info: ModelCardInfo) -> str:
    base = info.base_model or info.base_model_source
    trained = f"fine-tuned from `{base}`" if base else "fine-tuned"
    data = f" on {', '.join(f'`{d}`' for d in info.datasets)}" if info.datasets else ""
    step = f", saved at optimizer step {info.step}" if info.step is not None else ""
    return (
        f"A Korean extractive question-answering model (KorQuAD style) {trained}{data} with "
        f"kqa's training loop{step}. Given a question and a passage, it returns the span of the passage that "
        "answers it."
    )


def _scores(info: ModelCardInfo) -> str:
    if not info.dev_scores:
        return "## Evaluation\n\nThis directory was saved without an evaluation at its step."
    rows = "\n".join(f"| {s.name} | `{s.dataset}` | {s.exact_match:.2f} | {s.f1:.2f} |" for s in info.dev_scores)
    return (
        "## Evaluation\n\nOfficial KorQuAD 1.0 exact match and character F1 (×100) on each validation set at "
        f"this step:\n\n| set | data | EM | F1 |\n|---|---|---|---|\n{rows}"
    )


def _settings(info: ModelCardInfo) -> str:
    if not info.settings:
        return ""
    rows = "\n".join(
        f"| `{name}` | `{json.dumps(value, ensure_ascii=False)}` |" for name, value in info.settings.items()
    )
    return f"## Training settings\n\n| setting | value |\n|---|---|\n{rows}"


def _usage(info: ModelCardInfo) -> str:
    kqa_usage = (
        "## Usage\n\nWith kqa (the window and decoding settings saved in `kqa_config.json` are applied):\n\n"
        "```python\nfrom kqa import QuestionAnswerer\n\n"
        f'qa = QuestionAnswerer.from_pretrained("{info.load_from}")\n'
        'print(qa("대한민국의 수도는 어디인가?", "대한민국의 수도는 서울이다.").text)\n```\n\n'
        f'```bash\nkqa predict --model {info.load_from} --question "…" --context "…"\n```'
    )
    if info.transformers_class is None:
        return (
            f"{kqa_usage}\n\nThe weights are not in a `transformers` `*ForQuestionAnswering` layout (the head is "
            "not a single linear layer over the encoder): load them with kqa."
        )
    return (
        f"{kqa_usage}\n\nWith `transformers` alone (`config.json` names `{info.transformers_class}`; the answer "
        "is the best start/end pair, without kqa's n-best search, length limit and Korean answer boundaries):"
        "\n\n```python\nfrom transformers import AutoModelForQuestionAnswering, AutoTokenizer\n\n"
        f'model = AutoModelForQuestionAnswering.from_pretrained("{info.load_from}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{info.load_from}")\n```'
    )


# ---- a saved directory's card -----------------------------------------------------------------------------


def card_info_from_model_dir(model_dir: Path, load_from: Optional[str] = None) -> ModelCardInfo:
    """What a saved model directory says about itself (config.json, metrics.json): for a directory saved
    without a card. Its training settings, data and base model are not on disk, so the card leaves them out."""
    model_dir = Path(model_dir)
    metrics = _read_json(model_dir / "metrics.json")
    # `<set>/f1`; a set's breakdown (`<set>/question_type=1/f1`) is part of that set, not another one
    scored = {key.rpartition("/")[0] for key in metrics if key.endswith("/f1") and key.count("/")}
    sets = sorted(s for s in scored if not any(s.startswith(f"{other}/") for other in scored))
    scores = tuple(DevScore(s, s, metrics[f"{s}/exact_match"], metrics[f"{s}/f1"]) for s in sets)
    return ModelCardInfo(
        model_name=model_dir.resolve().name,
        dev_scores=scores,
        step=metrics.get("step"),
        load_from=load_from or str(model_dir),
    )


def transformers_class_of(model_dir: Path) -> Optional[str]:
    """The `*ForQuestionAnswering` class a saved config.json names (`QuestionAnsweringModel.export_config`
    names one only when the weights are in its layout)."""
    architectures = _read_json(Path(model_dir) / "config.json").get("architectures") or []
    return next((name for name in architectures if name.endswith("ForQuestionAnswering")), None)


def base_model_license(name_or_path: str) -> Optional[str]:
    """The license in the base model's own card when that card is on this machine (a local directory, or
    the hub cache); None otherwise (nothing is downloaded)."""
    from huggingface_hub import metadata_load, try_to_load_from_cache

    path = Path(name_or_path).expanduser() / CARD_FILE
    if not path.is_file():
        cached = try_to_load_from_cache(name_or_path, CARD_FILE) if is_hub_id(name_or_path) else None
        path = Path(cached) if isinstance(cached, str) else None
    if path is None:
        return None
    try:
        return (metadata_load(path) or {}).get("license")
    except Exception as err:  # noqa: BLE001 (a card that does not parse must not stop a run from saving)
        logger.warning("%s: could not read its license (%s); the card names none", path, err)
        return None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
