"""A user's documents → `Document`s → `Passage`s with character offsets into their document.

Sources (`load_corpus`): a folder (searched recursively) or single files of
- `.txt` / `.md`: one document per file, id = its path relative to the folder, title = the file name;
  a `.md` file may begin with YAML front matter (a `---` block): its keys become metadata (`title`
  the title) and it is left out of the text indexed;
- `.jsonl`: one `{"id", "title", "text"}` object per line (`id` defaults to `path:line`); the record's
  other fields become metadata;
- `.json`: SQuAD-format files, one document per distinct paragraph context;
- `.pdf`, `.html` / `.htm`, `.docx`: one document per file, its text extracted by
  `kqa.retrieval.formats`, with the regions it came from (`Document.regions`: page, element,
  paragraph) so that an answer can name where it is. A file that holds no readable text (corrupt,
  encrypted, a scan without a text layer) is skipped with its reason; so is every such file when the
  library that reads it is not installed (the reason names `pip install 'kqa[documents]'`).

Every document carries `metadata` (what `kqa.retrieval.filters` selects on): `path` (its file relative
to the folder indexed; the file's name for a file given directly), `format` (the suffix without the
dot), `mtime` (the file's modification time, epoch seconds), `title`, and the fields above.

Files that cannot be documents (binary, not UTF-8, larger than `max_file_bytes`, empty, another
suffix) are skipped and counted in the `CorpusReport`, each with its reason; `strict=True` makes the
first of them an error instead. Records that are wrong (malformed JSON, a missing `text`, a duplicate
id) are always errors naming the file and line. An empty corpus is an error.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kqa.extras import MissingExtraError
from kqa.retrieval.formats import EXTRACTORS, ExtractionError, Region, location_of
from kqa.squad import squad_paragraphs
from kqa.text import NotUtf8Error, decode_utf8, iter_jsonl_objects, nfc_with_alignment
from kqa.text import check_text as _check_text

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
SQUAD_SUFFIX = ".json"
DOCUMENT_SUFFIXES = tuple(EXTRACTORS)  # .pdf, .html, .htm, .docx
READ_SUFFIXES = (*TEXT_SUFFIXES, JSONL_SUFFIX, SQUAD_SUFFIX, *DOCUMENT_SUFFIXES)
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
    # Where each piece of `text` came from in the file, (start, end, label) such as "page 3": PDF, HTML
    # and DOCX documents have them (kqa.retrieval.formats), plain text none.
    regions: tuple[Region, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Passage:
    """A piece of a document: `document.text[start:end] == text`."""

    index: int  # position in the index
    doc_id: str
    title: str
    text: str
    start: int
    end: int
    # Where the passage is in its file ("page 3", "page 3 – page 4"): from the document's regions.
    location: str | None = field(default=None, compare=False)

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
        if file.suffix.lower() not in READ_SUFFIXES:
            report.skip(
                str(file), f"unsupported suffix: {file.suffix or '(none)'} (read: {', '.join(READ_SUFFIXES)})", strict
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
    suffix = file.suffix.lower()
    base = {"path": doc_id, "format": suffix.lstrip("."), "mtime": file.stat().st_mtime}
    if suffix in EXTRACTORS:
        yield from _extracted_document(file, doc_id, data, report, strict, base)
        return
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        report.skip(str(file), "binary: a NUL byte in its first 8 KiB", strict)
        return
    try:
        text = decode_utf8(data, str(file))
    except NotUtf8Error as err:
        report.skip(str(file), f"not UTF-8: {err.detail}", strict)
        return
    report.files_read += 1
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
    return dataclasses.replace(document, metadata=metadata)


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


def _extracted_document(
    file: Path, doc_id: str, data: bytes, report: CorpusReport, strict: bool, base: dict
) -> Iterator[Document]:
    """The one document of a PDF / HTML / DOCX file, or its skip with the reason it cannot be read."""
    try:
        extracted = EXTRACTORS[file.suffix.lower()](data)
    except MissingExtraError as err:
        report.skip(str(file), f"missing dependency: {err}", strict)
        return
    except ExtractionError as err:
        report.skip(str(file), err.reason, strict)
        return
    report.files_read += 1
    text = check_text(extracted.text, str(file))
    yield Document(
        id=doc_id,
        title=file.stem,
        text=text,
        source=str(file),
        metadata={**base, "title": file.stem, **extracted.metadata},
        regions=extracted.regions,
    )


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


SENTENCE_SPLITTERS = ("kiwi", "regex")


@dataclass(frozen=True)
class PassageSettings:
    """Passages: paragraphs (split at blank lines) packed up to `max_chars`; a longer paragraph is cut
    into `max_chars` pieces that overlap by `overlap_chars`, each cut moved back to a sentence end or a
    space when one is near. `sentences`: how sentence ends are found, "kiwi" (Kiwi's sentence
    splitter, which also knows the ends without a full stop: "…이다 그리고 …") or "regex" (punctuation
    and "다." only; also the fallback when kiwipiepy cannot be loaded)."""

    max_chars: int = 500
    overlap_chars: int = 100
    sentences: str = "kiwi"

    def __post_init__(self):
        if self.sentences not in SENTENCE_SPLITTERS:
            raise ValueError(f"sentences must be one of {SENTENCE_SPLITTERS}, got {self.sentences!r}")
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


def _regex_sentence_ends(text: str, start: int, end: int) -> list[int]:
    return [m.end() for m in _SENTENCE_END.finditer(text, start, end)]


def _kiwi_sentence_ends(text: str, start: int, end: int) -> list[int] | None:
    """Offsets in `text` where Kiwi ends a sentence of text[start:end] (None when Kiwi cannot be used).
    Kiwi reads NFC; its offsets are mapped back, so an NFD corpus is cut at the same places."""
    try:
        from kqa.boundaries import kiwi

        analyzer = kiwi()
    except ImportError as err:
        _warn_once(f"passages are cut at regex sentence ends: {err}")
        return None
    nfc, origin = nfc_with_alignment(text[start:end])
    return [start + int(origin[s.end]) for s in analyzer.split_into_sents(nfc, return_sub_sents=False)]


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _sentence_ends(text: str, start: int, end: int, settings: PassageSettings) -> list[int]:
    """Sorted offsets where a sentence of text[start:end] ends (a cut there splits no sentence)."""
    ends = _kiwi_sentence_ends(text, start, end) if settings.sentences == "kiwi" else None
    return _regex_sentence_ends(text, start, end) if ends is None else ends


def _cut_long(text: str, start: int, end: int, settings: PassageSettings) -> list[tuple[int, int]]:
    """Pieces of at most max_chars covering text[start:end], consecutive pieces overlapping."""
    ends = _sentence_ends(text, start, end, settings)
    pieces = []
    while True:
        if end - start <= settings.max_chars:
            pieces.append(_trimmed(text, start, end))
            return pieces
        limit = start + settings.max_chars
        # The last sentence end (else space) in the piece's second half, so no word is cut in two.
        floor = start + settings.max_chars // 2
        i = bisect.bisect_right(ends, limit)
        cut = ends[i - 1] if i and ends[i - 1] > floor else -1
        if cut <= floor:
            space = text.rfind(" ", floor, limit)
            cut = space + 1 if space > floor else limit
        pieces.append(_trimmed(text, start, cut))
        start = _overlap_start(text, ends, cut, settings, previous=start)


def _overlap_start(text: str, ends: list[int], cut: int, settings: PassageSettings, previous: int) -> int:
    """Where the piece after a cut begins: `overlap_chars` before it, moved to the first sentence start
    in the overlap (else the first word start), so the next piece too begins with a whole sentence."""
    next_start = max(cut - settings.overlap_chars, previous + 1)
    if not settings.overlap_chars:
        return next_start
    i = bisect.bisect_left(ends, next_start)
    if i < len(ends) and ends[i] < cut:  # a sentence ends inside the overlap: the next one starts there
        return ends[i]
    space = text.find(" ", next_start, cut)
    return space + 1 if space != -1 and space + 1 < cut else next_start


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
    kept = [(s, e) for s, e in spans if e > s]
    return [passage_of(document, first_index + i, s, e) for i, (s, e) in enumerate(kept)]


def passage_of(document: Document, index: int, start: int, end: int) -> Passage:
    """The passage document.text[start:end], with its location in the document's file."""
    return Passage(
        index=index,
        doc_id=document.id,
        title=document.title,
        text=document.text[start:end],
        start=start,
        end=end,
        location=location_of(document.regions, start, end),
    )


def split_corpus(documents: Iterable[Document], settings: PassageSettings = PassageSettings()) -> list[Passage]:
    passages: list[Passage] = []
    for document in documents:
        passages.extend(split_passages(document, settings, first_index=len(passages)))
    return passages
