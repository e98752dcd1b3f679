"""Where flat rows of QA data come from: data files by format, and hub datasets by name and config.

A data file is read by its extension (`FILE_FORMATS`, the one table of the formats kqa reads).
`read_table` returns a `Table`: the column names and every record as a dict, each with the label that
error messages name it by (`line 12` in JSONL and CSV, `[3]` / `data[3]` in a JSON list, `row 3` in
Parquet). SQuAD-layout JSON is not a table: `is_squad_document` tells it apart, and `kqa.data` walks it
with `kqa.squad`. `open_hub_dataset` is the one place that loads a hub dataset, online or from the hub
cache. Which column means what is decided afterwards, by `kqa.columns`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kqa.text import NotUtf8Error, iter_jsonl_objects, read_utf8_text
from kqa.validation import DataValidationError

# extension → what kqa reads in such a file (docs/data.md shows this table)
FILE_FORMATS = {
    ".json": "SQuAD-layout JSON (data → paragraphs → qas), or flat records: a JSON list of rows, or {'data': [rows]}",
    ".jsonl": "JSON Lines: one row object per line (blank lines skipped)",
    ".csv": "CSV with a header row; every cell is text (answers as a JSON cell, or answer_text / answer_start)",
    ".parquet": "Parquet: one row per question, columns typed by the file",
}


@dataclass
class Table:
    """The rows of one flat data file, each with the label that names it in messages."""

    source: str
    file_format: str  # an extension of FILE_FORMATS, without the dot
    columns: list[str]
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    text_cells: bool = False  # True for CSV: numbers and booleans arrive as text


def file_format(path: Path) -> str:
    """The extension of `path` that `FILE_FORMATS` knows (without the dot), or a ValueError listing them."""
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise DataValidationError(
            f"{path}: unknown data file format {path.suffix or '(no extension)'!r}; kqa reads {', '.join(FILE_FORMATS)}"
        )
    return suffix[1:]


def _text(path: Path) -> str:
    try:
        return read_utf8_text(path)  # a leading byte-order mark is accepted
    except NotUtf8Error as err:
        raise DataValidationError(str(err)) from None


def read_json_document(path: Path) -> Any:
    """The JSON document in `path`; bad bytes or bad JSON raise `DataValidationError` naming where."""
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise DataValidationError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (character {err.pos})"
        ) from err


def is_squad_document(document: Any) -> bool:
    """True for the SQuAD layout: an object whose `data` list is empty or starts with an article
    (an object with `paragraphs`); anything else in a .json file is read as flat records."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return isinstance(document, dict)  # an object without a data list: the SQuAD walker names the problem
    data = document["data"]
    return not data or (isinstance(data[0], dict) and "paragraphs" in data[0])


def _columns_of(records: list[tuple[str, dict]]) -> list[str]:
    names: dict[str, None] = {}
    for _, row in records:
        names.update(dict.fromkeys(row))
    return list(names)


def json_records_table(document: Any, path: Path) -> Table:
    """A .json file of flat rows: a list of objects, or `{"data": [objects]}`."""
    rows, prefix = (document, "") if isinstance(document, list) else (document["data"], "data")
    records = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataValidationError(f"{path}: {prefix}[{index}]: expected a row object, got {type(row).__name__}")
        records.append((f"{prefix}[{index}]", row))
    return Table(str(path), "json", _columns_of(records), records)


def _jsonl_table(path: Path) -> Table:
    records = [
        (f"line {line}", row)
        for line, _, row in iter_jsonl_objects(_text(path), str(path), "a row object", DataValidationError)
    ]
    return Table(str(path), "jsonl", _columns_of(records), records)


def _csv_table(path: Path) -> Table:
    # Lines end at \n, \r\n or \r only, as in csv's own newline="" reading: str.splitlines would also cut
    # at \f, \x1c-\x1e, \x85, \u2028 and \u2029, which csv writers leave unquoted inside a cell.
    reader = csv.reader(io.StringIO(_text(path), newline=""), strict=True)
    header: list[str] | None = None
    records = []
    start = 1
    try:
        for cells in reader:
            where, start = f"line {start}", reader.line_num + 1  # a quoted cell may span lines
            if not cells:
                continue
            if header is None:
                header = _csv_header(path, cells)
                continue
            if len(cells) != len(header):
                raise DataValidationError(f"{path}: {where}: {len(cells)} cells, the header has {len(header)}")
            records.append((where, dict(zip(header, cells))))
    except csv.Error as err:
        raise DataValidationError(f"{path}: line {reader.line_num}: not valid CSV: {err}") from None
    if header is None:
        raise DataValidationError(f"{path}: an empty CSV file (no header row)")
    return Table(str(path), "csv", header, records, text_cells=True)


def _csv_header(path: Path, cells: list[str]) -> list[str]:
    names = [c.strip() for c in cells]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice or not all(names):
        raise DataValidationError(f"{path}: line 1: the header needs distinct, non-empty column names, got {cells}")
    return names


def _parquet_table(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataValidationError(f"{path}: not a readable Parquet file: {err}") from None
    records = [(f"row {index}", row) for index, row in enumerate(table.to_pylist())]
    return Table(str(path), "parquet", list(table.column_names), records)


_READERS: dict[str, Callable[[Path], Table]] = {
    "jsonl": _jsonl_table,
    "csv": _csv_table,
    "parquet": _parquet_table,
}


def read_table(path: Path) -> Table:
    """The rows of a flat data file (.jsonl, .csv, .parquet; a .json file of flat records too)."""
    kind = file_format(path)
    if kind == "json":
        document = read_json_document(path)
        if is_squad_document(document):
            raise DataValidationError(f"{path}: a SQuAD-layout JSON file, not flat records")
        return json_records_table(document, path)
    return _READERS[kind](path)


def open_hub_dataset(
    name: str,
    split: str,
    *,
    config_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
):
    """One split of a dataset (`datasets.Dataset`): a local dataset directory, or a hub id.

    First `datasets.load_dataset(name, config_name, split=..., revision=...)`. Offline (HF_HUB_OFFLINE=1),
    where `datasets` cannot resolve a hub id (a ConnectionError), the repository's snapshot is taken from the hub cache
    (`huggingface_hub.snapshot_download(..., local_files_only=True)`) and its files are loaded: through the
    `configs:` of its README.md, or from the folder named like the config (`mrc/validation-*.parquet`).
    """
    import datasets
    from huggingface_hub import constants, snapshot_download

    cache = None if cache_dir is None else str(cache_dir)
    try:
        return datasets.load_dataset(name, config_name, split=split, revision=revision, cache_dir=cache)
    except ConnectionError:  # offline, datasets cannot resolve a hub id even when the hub cache holds it
        if Path(name).is_dir() or not constants.HF_HUB_OFFLINE:
            raise
    snapshot = Path(snapshot_download(name, repo_type="dataset", revision=revision, local_files_only=True))
    try:
        return datasets.load_dataset(str(snapshot), config_name, split=split, cache_dir=cache)
    except ValueError:  # no `configs:` in README.md naming config_name: try the folder of that name
        folder = snapshot / config_name if config_name else None
        if folder is None or not folder.is_dir():
            raise
        return datasets.load_dataset(str(folder), split=split, cache_dir=cache)
