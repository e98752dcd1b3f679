"""A user's documents → `Document`s → `Passage`s with character offsets into their document.

Sources (`load_corpus`): a folder (searched recursively) or single files of
- `.txt` / `.md`: one document per file, id = its path relative to the folder, title = the file name;
  a `.md` file may begin with YAML front matter (a `---` block): its keys become metadata (`title`
  the title) and it is left out of the text indexed;
- `.jsonl`: one `{"id", "title", "text"}` object per line (`id` defaults to `path:line`); the record's
  other fields become metadata;
- `.json`: SQuAD-format files, one document per distinct paragraph context.

Every document carries `metadata` (what `kqa.retrieval.filters` selects on): `path` (its file relative
to the folder indexed; the file's name for a file given directly), `format` (the suffix without the
dot), `mtime` (the file's modification time, epoch seconds), `title`, and the fields above.

Files that cannot be documents (binary, not UTF-8, larger than `max_file_bytes`, empty, another
suffix) are skipped and counted in the `CorpusReport`, each with its reason; `strict=True` makes the
first of them an error instead. Records that are wrong (malformed JSON, a missing `text`, a duplicate
id) are always errors naming the file and line. An empty corpus is an error.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kqa.squad import squad_paragraphs
from kqa.text import NotUtf8Error, decode_utf8, iter_jsonl_objects
from kqa.text import check_text as _check_text

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
SQUAD_SUFFIX = ".json"
DEFAULT_MAX_FILE_BYTES = 64 * 2**20
BINARY_SNIFF_BYTES = 8192
# Metadata keys kqa sets itself: a front matter or JSONL field of the same name is an error, not a silent override.
RESERVED_METADATA = ("path", "format", "mtime")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?---[ \t]*(\r?\n|\Z)", re.DOTALL)


class CorpusError(ValueError):
    """A corpus that cannot be indexed; the message names the file, the record and the problem."""


def check_text(value: object, where: str) -> str:
    """kqa.text.check_text, raising CorpusError (a wrong record is a corpus error like the others)."""
    try:
        return _check_text(value, where)
    except ValueError as err:
        raise CorpusError(str(err)) from None


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    source: str  # file (and line or paragraph) it came from
    # Flat JSON object that filters select on (kqa.retrieval.filters: keys, value types).
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Passage:
    """A piece of a document: `document.text[start:end] == text`."""

    index: int  # position in the index
    doc_id: str
    title: str
    text: str
    start: int
    end: int

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.start}-{self.end}"


@dataclass
class CorpusReport:
    files_read: int = 0
    documents: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    merged_duplicate_contexts: int = 0  # SQuAD paragraphs whose context an earlier one already holds

    def skip(self, source: str, reason: str, strict: bool) -> None:
        if strict:
            raise CorpusError(f"{source}: {reason}")
        self.skipped.append((source, reason))

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, reason in self.skipped))

    def summary(self) -> str:
        text = f"{self.documents} documents from {self.files_read} files"
        if self.merged_duplicate_contexts:
            text += f"; {self.merged_duplicate_contexts} repeated SQuAD contexts indexed once"
        if self.skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped_by_reason().items()))
            text += f"; skipped {len(self.skipped)} ({reasons})"
        return text

    def to_dict(self) -> dict:
        return {
            "files_read": self.files_read,
            "documents": self.documents,
            "merged_duplicate_contexts": self.merged_duplicate_contexts,
            "skipped": [{"source": s, "reason": r} for s, r in self.skipped],
        }


# ----------------------------------------------------------------------------------------------
# Reading


def load_corpus(
    paths: str | Path | Sequence[str | Path], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, strict: bool = False
) -> tuple[list[Document], CorpusReport]:
    """Every document under `paths` (folders and files), in a stable order, with a report of what was
    skipped and why. Document ids are unique across all paths (a duplicate is a `CorpusError`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    report = CorpusReport()
    documents: list[Document] = []
    first_source: dict[str, str] = {}
    seen_contexts: set[str] = set()  # SQuAD contexts, across files
    for path in map(Path, paths):
        if not path.exists():
            raise CorpusError(f"{path}: no such file or folder")
        for file, doc_id_prefix in _files_under(path, report, strict):
            for doc in _read_file(file, doc_id_prefix, report, max_file_bytes, strict, seen_contexts):
                if doc.id in first_source:
                    raise CorpusError(
                        f"{doc.source}: duplicate document id {doc.id!r} (first seen at {first_source[doc.id]})"
                    )
                first_source[doc.id] = doc.source
                documents.append(doc)
    report.documents = len(documents)
    if not documents:
        raise CorpusError(f"{', '.join(map(str, paths))}: the corpus holds no documents ({report.summary()})")
    return documents, report


def _files_under(path: Path, report: CorpusReport, strict: bool) -> Iterator[tuple[Path, str]]:
    """(file, id prefix) pairs: a folder's files in sorted order, ids relative to the folder."""
    if path.is_file():
        yield path, path.name
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            report.skip(str(file), "hidden: a dot file or folder", strict=False)  # .git and the like
            continue
        if file.suffix.lower() not in (*TEXT_SUFFIXES, JSONL_SUFFIX, SQUAD_SUFFIX):
            report.skip(
                str(file),
                f"unsupported suffix: {file.suffix or '(none)'} "
                f"(read: {', '.join((*TEXT_SUFFIXES, JSONL_SUFFIX, SQUAD_SUFFIX))})",
                strict,
            )
            continue
        yield file, relative.as_posix()


def _read_file(
    file: Path, doc_id: str, report: CorpusReport, max_file_bytes: int, strict: bool, seen_contexts: set[str]
) -> Iterator[Document]:
    size = file.stat().st_size
    if size > max_file_bytes:
        report.skip(
            str(file),
            f"too large: {size:,} bytes > {max_file_bytes:,} (raise max_file_bytes or split the file)",
            strict,
        )
        return
    data = file.read_bytes()
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        report.skip(str(file), "binary: a NUL byte in its first 8 KiB", strict)
        return
    try:
        text = decode_utf8(data, str(file))
    except NotUtf8Error as err:
        report.skip(str(file), f"not UTF-8: {err.detail}", strict)
        return
    report.files_read += 1
    suffix = file.suffix.lower()
    base = {"path": doc_id, "format": suffix.lstrip("."), "mtime": file.stat().st_mtime}
    if not text.strip():  # whatever its suffix: an empty .json is not a malformed one
        report.skip(str(file), "empty: no text", strict)
    elif suffix == JSONL_SUFFIX:
        yield from _jsonl_documents(file, doc_id, text, report, strict, base)
    elif suffix == SQUAD_SUFFIX:
        for doc in _squad_documents(file, doc_id, text, report, seen_contexts, strict):
            yield _with_metadata(doc, {**base, "title": doc.title})
    else:
        check_text(text, str(file))
        metadata = {**base, "title": file.stem}
        if suffix == ".md":
            text, front = split_front_matter(text, str(file))
            metadata.update(front)
            if not text.strip():
                report.skip(str(file), "empty: no text after the front matter", strict)
                return
        yield Document(id=doc_id, title=str(metadata["title"]), text=text, source=str(file), metadata=metadata)


def _with_metadata(document: Document, metadata: dict) -> Document:
    return Document(document.id, document.title, document.text, document.source, metadata)


def split_front_matter(text: str, where: str) -> tuple[str, dict]:
    """(the text after a leading `---` YAML block, that block's keys as metadata). The block is left
    out of the text indexed: it is not prose a question is answered from, and answer offsets are
    offsets into `Document.text` (the body), which the index stores."""
    import yaml

    match = _FRONT_MATTER.match(text)
    if match is None:
        return text, {}
    try:
        front = yaml.safe_load(match.group(1) or "") or {}
    except yaml.YAMLError as err:
        raise CorpusError(f"{where}: front matter is not valid YAML: {err}") from None
    if not isinstance(front, dict):
        raise CorpusError(f"{where}: front matter must be a mapping of keys to values, got {type(front).__name__}")
    return text[match.end() :], metadata_fields(front, where)


def metadata_fields(fields: dict, where: str) -> dict:
    """Extra fields → metadata values: scalars (str, int, float, bool; a date as its ISO text) or lists of
    them; `tags` always a list of str. A null field is left out (as if absent); other types are errors
    naming `where` and the field."""
    import datetime as dt

    def scalar(value, name):
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, (str, int, float, bool)):
            return value
        raise CorpusError(
            f"{where}: field {name!r} must be a string, number, boolean or a list of them, got {type(value).__name__}"
        )

    out = {}
    for key, value in fields.items():
        key = str(key)
        if key in RESERVED_METADATA:
            raise CorpusError(f"{where}: field {key!r} is set by kqa itself (reserved: {', '.join(RESERVED_METADATA)})")
        if value is None:
            continue
        if isinstance(value, list):
            value = [scalar(v, f"{key}[{i}]") for i, v in enumerate(value)]
        else:
            value = scalar(value, key)
        if key == "tags":
            value = [str(v) for v in (value if isinstance(value, list) else [value])]
        out[key] = value
    return out


def _jsonl_documents(
    file: Path, file_id: str, text: str, report: CorpusReport, strict: bool, base: dict
) -> Iterator[Document]:
    for line_no, where, row in iter_jsonl_objects(
        text, str(file), "an object with 'text' (and 'id', 'title')", CorpusError
    ):
        if "text" not in row:
            raise CorpusError(f"{where}: missing field 'text'")
        body = check_text(row["text"], f"{where}: field 'text'")
        doc_id = row.get("id", f"{file_id}:{line_no}")
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)
        doc_id = check_text(doc_id, f"{where}: field 'id'")
        if not doc_id.strip():
            raise CorpusError(f"{where}: field 'id' is empty")
        title = row.get("title") or ""
        check_text(title, f"{where}: field 'title'")
        extra = metadata_fields({k: v for k, v in row.items() if k not in ("id", "title", "text")}, where)
        if not body.strip():
            report.skip(where, "empty: field 'text' holds no text", strict)
            continue
        metadata = {**base, "title": title, **extra}
        yield Document(id=doc_id, title=title, text=body, source=where, metadata=metadata)


def _squad_documents(
    file: Path, file_id: str, text: str, report: CorpusReport, seen: set[str], strict: bool = False
) -> Iterator[Document]:
    """One document per paragraph context; a context seen before (in any file) is indexed once."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(f"{file}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    for item in squad_paragraphs(data, str(file), CorpusError):
        where = f"{file}: {item.path}"
        context = item.paragraph.get("context")
        check_text(context, f"{where}: 'context'")
        if not context.strip():
            report.skip(where, "empty: 'context' holds no text", strict)
            continue
        if context in seen:
            report.merged_duplicate_contexts += 1
            continue
        seen.add(context)
        doc_id = squad_document_id(file_id, item.path.article, item.path.paragraph)
        yield Document(id=doc_id, title=str(item.title or ""), text=context, source=where)


def squad_document_id(file_id: str, article_index: int, paragraph_index: int) -> str:
    """The id of the document made from one SQuAD paragraph: `file_id` is the file's path relative to
    the folder given to `load_corpus` (its name, for a file given directly)."""
    return f"{file_id}/{article_index}/{paragraph_index}"


# ----------------------------------------------------------------------------------------------
# Splitting


@dataclass(frozen=True)
class PassageSettings:
    """Passages: paragraphs (split at blank lines) packed up to `max_chars`; a longer paragraph is cut
    into `max_chars` pieces that overlap by `overlap_chars`, each cut moved back to a sentence end or a
    space when one is near."""

    max_chars: int = 500
    overlap_chars: int = 100

    def __post_init__(self):
        if not isinstance(self.max_chars, int) or self.max_chars < 20:
            raise ValueError(f"max_chars must be an int >= 20, got {self.max_chars!r}")
        if not isinstance(self.overlap_chars, int) or not 0 <= self.overlap_chars <= self.max_chars // 2:
            raise ValueError(f"overlap_chars must be an int in [0, max_chars // 2], got {self.overlap_chars!r}")


_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?。」』\"')\]]\s|다\.\s|\n")


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank paragraph, without surrounding whitespace."""
    spans, start = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        spans.append(_trimmed(text, start, match.start()))
        start = match.end()
    spans.append(_trimmed(text, start, len(text)))
    return [(s, e) for s, e in spans if e > s]


def _cut_long(text: str, start: int, end: int, settings: PassageSettings) -> list[tuple[int, int]]:
    """Pieces of at most max_chars covering text[start:end], consecutive pieces overlapping."""
    pieces = []
    while True:
        if end - start <= settings.max_chars:
            pieces.append(_trimmed(text, start, end))
            return pieces
        limit = start + settings.max_chars
        # The last sentence end (else space) in the piece's second half, so no word is cut in two.
        floor = start + settings.max_chars // 2
        cut = max((m.end() for m in _SENTENCE_END.finditer(text, floor, limit)), default=-1)
        if cut <= floor:
            space = text.rfind(" ", floor, limit)
            cut = space + 1 if space > floor else limit
        pieces.append(_trimmed(text, start, cut))
        next_start = max(cut - settings.overlap_chars, start + 1)
        if settings.overlap_chars:  # begin the overlap at a word start
            space = text.find(" ", next_start, cut)
            if space != -1 and space + 1 < cut:
                next_start = space + 1
        start = next_start


def split_passages(
    document: Document, settings: PassageSettings = PassageSettings(), first_index: int = 0
) -> list[Passage]:
    """The passages of one document, in order; `document.text[p.start:p.end] == p.text`."""
    text, spans = document.text, []
    group_start = group_end = None
    for start, end in paragraph_spans(text):
        if end - start > settings.max_chars:
            if group_start is not None:
                spans.append((group_start, group_end))
                group_start = None
            spans.extend(_cut_long(text, start, end, settings))
        elif group_start is not None and end - group_start <= settings.max_chars:
            group_end = end  # pack short paragraphs together
        else:
            if group_start is not None:
                spans.append((group_start, group_end))
            group_start, group_end = start, end
    if group_start is not None:
        spans.append((group_start, group_end))
    return [
        Passage(index=first_index + i, doc_id=document.id, title=document.title, text=text[s:e], start=s, end=e)
        for i, (s, e) in enumerate(spans)
        if e > s
    ]


def split_corpus(documents: Iterable[Document], settings: PassageSettings = PassageSettings()) -> list[Passage]:
    passages: list[Passage] = []
    for document in documents:
        passages.extend(split_passages(document, settings, first_index=len(passages)))
    return passages
