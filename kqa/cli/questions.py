"""The question files of `kqa predict --input`: JSONL (one {id?, question, context} per line) or
SQuAD/KorQuAD JSON (answers optional), read with errors naming the file and the record."""

from __future__ import annotations

import json
from pathlib import Path

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


def read_questions(path: Path) -> list[dict]:
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
