"""Load extractive-QA examples into the flat SQuAD row schema, validating every answer.

Sources:
- SQuAD-layout JSON (`data` → `paragraphs` → `qas` → `answers`): KorQuAD 1.0 and SQuAD 1.1/2.0 files,
  with or without a top-level `version` key (`load_squad_json`);
- flat rows in a data file: a .json list of rows, .jsonl, .csv, .parquet (`load_data_file` takes any data
  file; `kqa.tables.FILE_FORMATS`);
- hub datasets by name and config (`load_hf_dataset`; offline from the hub cache: `kqa.tables.open_hub_dataset`);
- any `datasets.Dataset` (`validate_examples`).

Flat sources are read through a `kqa.columns.ColumnPlan`: a known schema recognised by its columns
(the flat SQuAD layout of `KorQuAD/squad_kor_v1`, KLUE-MRC, flat answer columns) or a user's column
mapping (`columns={"id": "qid", ...}`); columns outside the schema are carried along on the examples.

All of them go through the same validation (`kqa.validation.ExampleValidator`). Text is stored exactly as the source
gave it; answers are compared in NFC (see `kqa.text`). An `answer_start` that does not point at its
text is repaired to the nearest occurrence of the text, or the answer is rejected when the text is not
in the context; a question left without a valid answer is rejected. Structural problems (a file that
is not UTF-8, bad JSON, wrong layout, missing or ill-typed fields, empty text, a lone surrogate in a
string, duplicate ids) raise `DataValidationError`.
Every repair and rejection is recorded in the `LoadReport` returned with the examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple
from pathlib import Path
from typing import Any

import datasets

from kqa.columns import ColumnPlan, raw_question, resolve_columns
from kqa.squad import article_paragraphs, paragraph_questions, squad_articles
from kqa.tables import (
    FILE_FORMATS,
    file_format,
    is_squad_document,
    json_records_table,
    open_hub_dataset,
    read_json_document,
    read_table,
)
from kqa.validation import (  # the report and error types are part of this module's API
    EXAMPLE_FEATURES,
    MISSING,
    DataValidationError,
    DroppedAnswers,
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
    "DroppedAnswers",
    "LoadReport",
    "Location",
    "RejectedAnswer",
    "RejectedQuestion",
    "RepairedAnswer",
    "align_answer",
    "load_data_file",
    "load_examples",
    "load_hf_dataset",
    "load_squad_json",
    "read_json_file",
    "validate_examples",
]


REQUIRED_FLAT_COLUMNS = ("id", "context", "question", "answers")  # the flat SQuAD layout (kqa.columns)
Columns = Mapping[str, str]  # field → source column (kqa.columns.resolve_columns)

# --------------------------------------------------------------------------------------------------
# SQuAD-layout JSON
# --------------------------------------------------------------------------------------------------


def read_json_file(path: Path) -> Any:
    return read_json_document(path)


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
    return _validate_squad(read_json_document(path), path, strict)


def _validate_squad(document: Any, path: Path, strict: bool) -> tuple[datasets.Dataset, LoadReport]:
    report = LoadReport(source=str(path), source_kind="squad-json")
    validator = ExampleValidator(report)
    for raw in _iter_squad_questions(document, str(path), report):
        validator.add(raw)
    return validator.finish(strict)


# --------------------------------------------------------------------------------------------------
# Flat rows: data files, hub datasets, any Dataset
# --------------------------------------------------------------------------------------------------


def _validate_rows(
    rows: Iterable[tuple[Location, dict]],
    plan: ColumnPlan,
    report: LoadReport,
    *,
    strict: bool,
    text_cells: bool = False,
) -> tuple[datasets.Dataset, LoadReport]:
    """Every row read through `plan` and checked; articles / paragraphs count distinct titles and contexts."""
    report.columns, report.carried = plan.describe(), plan.carried
    validator = ExampleValidator(report)
    titles: set = set()
    paragraphs: set = set()
    for location, row in rows:
        raw = raw_question(plan, location, row, text_cells)
        validator.add(raw)
        titles.add(raw.title)
        paragraphs.add((raw.title, raw.context))
    report.num_articles, report.num_paragraphs = len(titles), len(paragraphs)
    return validator.finish(strict)


def _iter_dataset_rows(dataset: datasets.Dataset, source: str, batch_size: int = 1000) -> Iterator[tuple]:
    row_index = 0
    for batch in dataset.iter(batch_size=batch_size):  # column batches are much faster than row access
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            yield Location(source, row_index=row_index), dict(zip(names, values))
            row_index += 1


def validate_examples(
    dataset: datasets.Dataset, source: str, *, strict: bool = False, columns: Columns | None = None
) -> tuple[datasets.Dataset, LoadReport]:
    """Validate a flat Dataset: a known schema (the flat SQuAD columns id, title?, context, question,
    answers, is_impossible?; KLUE-MRC; ...) or the user's `columns` mapping (field → column).

    This is the entry point for any other source: build a Dataset and pass it here to get the same checks,
    repairs and report as the file loaders. Columns outside the schema are carried along.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"{source}: expected a datasets.Dataset, got {type(dataset).__name__} (a DatasetDict needs a split)"
        )
    plan = resolve_columns(dataset.column_names, source, columns)
    report = LoadReport(source=source, source_kind="dataset")
    return _validate_rows(_iter_dataset_rows(dataset, source), plan, report, strict=strict)


def load_data_file(
    path: str | Path, *, columns: Columns | None = None, strict: bool = False
) -> tuple[datasets.Dataset, LoadReport]:
    """Any data file kqa reads (`kqa.tables.FILE_FORMATS`): SQuAD-layout JSON, or flat rows in .json,
    .jsonl, .csv or .parquet, read through a known schema or the `columns` mapping (field → column).
    Errors name the file and the record (`dev.jsonl: line 12 (id 'q7'): ...`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if file_format(path) == "json":
        document = read_json_document(path)
        if is_squad_document(document):
            if columns:
                raise ValueError(f"{path}: a column mapping applies to flat rows, not to a SQuAD-layout JSON file")
            return _validate_squad(document, path, strict)
        table = json_records_table(document, path)
    else:
        table = read_table(path)
    plan = resolve_columns(table.columns, str(path), columns)
    report = LoadReport(source=str(path), source_kind="file")
    rows = ((Location(str(path), record=label), row) for label, row in table.records)
    return _validate_rows(rows, plan, report, strict=strict, text_cells=table.text_cells)


def load_hf_dataset(
    name: str,
    split: str,
    *,
    config_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    columns: Columns | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Load one split of a dataset (e.g. `KorQuAD/squad_kor_v1`, or `klue` with `config_name="mrc"`) and
    validate it. `name` is a hub id (offline: from the hub cache, `kqa.tables.open_hub_dataset`) or a local
    directory of json/parquet files."""
    if not split:
        raise ValueError(f"{name}: a split is required (e.g. 'train' or 'validation')")
    dataset = open_hub_dataset(name, split, config_name=config_name, revision=revision, cache_dir=cache_dir)
    source = f"{name}{'/' + config_name if config_name else ''}[{split}]"
    return validate_examples(dataset, source, strict=strict, columns=columns)


def load_examples(source: str | Path, split: str | None = None, **kwargs: Any) -> tuple[datasets.Dataset, LoadReport]:
    """A path to an existing file → `load_data_file`; anything else → `load_hf_dataset` (needs `split`).

    Keyword arguments go to the chosen loader (`strict`, `columns`, and `config_name` / `revision` /
    `cache_dir` for datasets).
    """
    path = Path(source)
    if path.is_file():
        if split is not None:
            raise ValueError(f"{path}: a split only applies to datasets, not to a data file (got {split!r})")
        return load_data_file(path, **kwargs)
    if isinstance(source, Path) or path.suffix.lower() in FILE_FORMATS:
        raise FileNotFoundError(f"{source}: no such file")
    if split is None:
        raise ValueError(
            f"{source!r} is not an existing file, so it is read as a dataset name, "
            "which needs a split (e.g. split='train')"
        )
    return load_hf_dataset(str(source), split, **kwargs)
