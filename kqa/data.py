"""Load extractive-QA examples into the flat SQuAD row schema, validating every answer.

Sources:
- SQuAD-layout JSON (`data` → `paragraphs` → `qas` → `answers`): KorQuAD 1.0 and SQuAD 1.1/2.0 files,
  with or without a top-level `version` key (`load_squad_json`);
- datasets in the flat layout of `KorQuAD/squad_kor_v1`, by hub name or local path, through
  `datasets.load_dataset` (`load_hf_dataset`);
- any `datasets.Dataset` with the flat columns (`validate_examples`), so another source only has to
  produce those rows.

All of them go through the same validation (`kqa.validation.ExampleValidator`). Text is stored exactly as the source
gave it; answers are compared in NFC (see `kqa.text`). An `answer_start` that does not point at its
text is repaired to the nearest occurrence of the text, or the answer is rejected when the text is not
in the context; a question left without a valid answer is rejected. Structural problems (a file that
is not UTF-8, bad JSON, wrong layout, missing or ill-typed fields, empty text, a lone surrogate in a
string, duplicate ids) raise `DataValidationError`.
Every repair and rejection is recorded in the `LoadReport` returned with the examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import astuple
from pathlib import Path
from typing import Any

import datasets

from kqa.squad import article_paragraphs, paragraph_questions, squad_articles
from kqa.text import NotUtf8Error, read_utf8_text
from kqa.validation import (  # the report and error types are part of this module's API
    EXAMPLE_FEATURES,
    MISSING,
    DataValidationError,
    ExampleValidator,
    LoadReport,
    Location,
    RawQuestion,
    RejectedAnswer,
    RejectedQuestion,
    RepairedAnswer,
    align_answer,
    check_text_field,
    record_error,
)

__all__ = [
    "EXAMPLE_FEATURES",
    "REQUIRED_FLAT_COLUMNS",
    "DataValidationError",
    "LoadReport",
    "Location",
    "RejectedAnswer",
    "RejectedQuestion",
    "RepairedAnswer",
    "align_answer",
    "load_examples",
    "load_hf_dataset",
    "load_squad_json",
    "read_json_file",
    "validate_examples",
]


REQUIRED_FLAT_COLUMNS = ("id", "context", "question", "answers")

# --------------------------------------------------------------------------------------------------
# SQuAD-layout JSON
# --------------------------------------------------------------------------------------------------


def read_json_file(path: Path) -> Any:
    try:
        text = read_utf8_text(path)  # a leading byte-order mark is accepted, as by kqa.metric and the CLI
    except NotUtf8Error as err:
        raise DataValidationError(str(err)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataValidationError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (character {err.pos})"
        ) from err


def _raw_answers(location: Location, qa: dict) -> list[tuple[Any, Any]] | Any:
    answers = qa.get("answers", MISSING)
    if answers is MISSING:
        return MISSING
    if not isinstance(answers, list):
        raise record_error(location, f"'answers' must be a list, got {type(answers).__name__}", qa.get("id", MISSING))
    pairs = []
    for index, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise record_error(
                location, f"answer {index} must be an object, got {type(answer).__name__}", qa.get("id", MISSING)
            )
        pairs.append((answer.get("text", MISSING), answer.get("answer_start", MISSING)))
    return pairs


def _iter_squad_questions(document: Any, source: str, report: LoadReport) -> Iterator[RawQuestion]:
    """Walk data → paragraphs → qas (`kqa.squad`: the layout checks), counting articles and paragraphs.

    `plausible_answers` (SQuAD 2.0) and any other extra field are not part of the schema and are ignored.
    """
    version = document.get("version") if isinstance(document, dict) else None
    report.version = None if version is None else str(version)
    for article in squad_articles(document, source, DataValidationError):
        report.num_articles += 1
        title = article.article.get("title", MISSING)
        for paragraph in article_paragraphs(article, source, DataValidationError):
            p_loc = Location(source, paragraph.path.article, paragraph.path.paragraph)
            context = check_text_field(p_loc, "context", paragraph.paragraph.get("context", MISSING))
            report.num_paragraphs += 1
            for question in paragraph_questions(paragraph, source, DataValidationError):
                q_loc = Location(source, *astuple(question.path))
                qa = question.qa
                yield RawQuestion(
                    location=q_loc,
                    id=qa.get("id", MISSING),
                    title=title,
                    context=context,
                    question=qa.get("question", MISSING),
                    answers=_raw_answers(q_loc, qa),
                    is_impossible=qa.get("is_impossible", MISSING),
                )


def load_squad_json(path: str | Path, *, strict: bool = False) -> tuple[datasets.Dataset, LoadReport]:
    """Read a SQuAD-layout JSON file (KorQuAD 1.0, SQuAD 1.1 / 2.0, with or without `version`).

    Returns the examples in the flat schema (`EXAMPLE_FEATURES`) and a `LoadReport`. Misaligned answers
    are repaired or rejected (see `align_answer`); with `strict=True` any rejection raises instead.
    Raises `DataValidationError` for malformed JSON, a wrong layout, missing or ill-typed fields,
    empty questions or contexts and duplicate ids; `FileNotFoundError` when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    report = LoadReport(source=str(path), source_kind="squad-json")
    validator = ExampleValidator(report)
    for raw in _iter_squad_questions(read_json_file(path), str(path), report):
        validator.add(raw)
    return validator.finish(strict)


# --------------------------------------------------------------------------------------------------
# Flat datasets (Hugging Face hub, local dataset files, any Dataset)
# --------------------------------------------------------------------------------------------------


def _iter_flat_rows(rows: Iterable[dict], source: str, has_is_impossible: bool) -> Iterator[RawQuestion]:
    for row_index, row in enumerate(rows):
        loc = Location(source, row_index=row_index)
        answers = row["answers"]
        if not isinstance(answers, dict) or "text" not in answers or "answer_start" not in answers:
            raise record_error(loc, "'answers' must hold 'text' and 'answer_start' lists", row.get("id", MISSING))
        texts, starts = answers["text"], answers["answer_start"]
        if len(texts) != len(starts):
            raise record_error(
                loc, f"'answers' has {len(texts)} texts but {len(starts)} answer_start values", row.get("id", MISSING)
            )
        # Without an is_impossible column an empty answer list marks an unanswerable question
        # (the convention of the hub's squad_v2).
        is_impossible = row["is_impossible"] if has_is_impossible else not texts
        yield RawQuestion(
            location=loc,
            id=row["id"],
            title=row.get("title", MISSING),
            context=row["context"],
            question=row["question"],
            answers=list(zip(texts, starts)),
            is_impossible=is_impossible,
        )


def _iter_dataset_rows(dataset: datasets.Dataset, batch_size: int = 1000) -> Iterator[dict]:
    for batch in dataset.iter(batch_size=batch_size):  # column batches are much faster than row access
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            yield dict(zip(names, values))


def validate_examples(
    dataset: datasets.Dataset, source: str, *, strict: bool = False
) -> tuple[datasets.Dataset, LoadReport]:
    """Validate a flat-schema Dataset (id, title?, context, question, answers, is_impossible?).

    This is the entry point for any other source: build a Dataset with these columns and pass it here
    to get the same checks, repairs and report as the JSON loader. Other columns are not carried over.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"{source}: expected a datasets.Dataset, got {type(dataset).__name__} (a DatasetDict needs a split)"
        )
    missing = [c for c in REQUIRED_FLAT_COLUMNS if c not in dataset.column_names]
    if missing:
        raise DataValidationError(f"{source}: missing columns {missing} (has {dataset.column_names})")
    report = LoadReport(source=source, source_kind="dataset")
    validator = ExampleValidator(report)
    has_is_impossible = "is_impossible" in dataset.column_names
    titles: set = set()
    paragraphs: set = set()
    for raw in _iter_flat_rows(_iter_dataset_rows(dataset), source, has_is_impossible):
        validator.add(raw)
        titles.add(raw.title)
        paragraphs.add((raw.title, raw.context))
    report.num_articles, report.num_paragraphs = len(titles), len(paragraphs)
    return validator.finish(strict)


def load_hf_dataset(
    name: str,
    split: str,
    *,
    config_name: str | None = None,
    cache_dir: str | Path | None = None,
    strict: bool = False,
) -> tuple[datasets.Dataset, LoadReport]:
    """Load one split with `datasets.load_dataset` (e.g. `KorQuAD/squad_kor_v1`) and validate it.

    `name` is anything `load_dataset` accepts: a hub name, or a local directory of json/parquet files.
    """
    if not split:
        raise ValueError(f"{name}: a split is required (e.g. 'train' or 'validation')")
    dataset = datasets.load_dataset(
        name, config_name, split=split, cache_dir=None if cache_dir is None else str(cache_dir)
    )
    source = f"{name}{'/' + config_name if config_name else ''}[{split}]"
    return validate_examples(dataset, source, strict=strict)


def load_examples(source: str | Path, split: str | None = None, **kwargs: Any) -> tuple[datasets.Dataset, LoadReport]:
    """A path to an existing file → `load_squad_json`; anything else → `load_hf_dataset` (needs `split`).

    Keyword arguments go to the chosen loader (`strict`, and `config_name` / `cache_dir` for datasets).
    """
    path = Path(source)
    if path.is_file():
        if split is not None:
            raise ValueError(f"{path}: a split only applies to datasets, not to a JSON file (got {split!r})")
        return load_squad_json(path, **kwargs)
    if isinstance(source, Path) or path.suffix.lower() == ".json":
        raise FileNotFoundError(f"{source}: no such file")
    if split is None:
        raise ValueError(
            f"{source!r} is not an existing file, so it is read as a dataset name, "
            "which needs a split (e.g. split='train')"
        )
    return load_hf_dataset(str(source), split, **kwargs)
