"""Text out of PDF, HTML and DOCX files, and where each piece of it came from.

An extractor turns a file's bytes into an `Extracted`: the text that is indexed (blocks joined by a
blank line, so `kqa.retrieval.corpus.paragraph_spans` finds them as paragraphs) and its regions,
`(start, end, label)` in character offsets of that text, each label naming the place in the file:

- PDF (`pypdf`): one region per page with text, "page 3"; pages are extracted by pypdf's text layer
  (no OCR: a scanned page without one has no text, and a PDF without any is `no text layer`);
- HTML (`beautifulsoup4`, Python's own html.parser): one region per block element, labelled by the
  heading it falls under and its place there, "h2: 역사 > p[3]"; scripts, styles, templates, forms,
  navigation and footers are not text of the page and are left out;
- DOCX (`python-docx`): one region per body paragraph and table row, "역사 > paragraph 2",
  "table 1 > row 3"; headers, footers, footnotes, comments and text boxes are not extracted.

A file that cannot be read raises `ExtractionError` with the reason the corpus report gives for
skipping it; a missing library raises `kqa.extras.MissingExtraError` (extra "documents").
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kqa.extras import require

BLOCK_SEPARATOR = "\n\n"  # what paragraph_spans splits at: a block never runs into the next one
EXTRA = "documents"  # the pip extra (kqa/extras.py) that installs the libraries below

Region = tuple[int, int, str]


class ExtractionError(ValueError):
    """A file of a known format that holds no text kqa can read; `reason` is the corpus report's."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Extracted:
    text: str
    regions: tuple[Region, ...]
    metadata: dict = field(default_factory=dict)  # "format", and "pages" for a PDF


class _TextBuilder:
    """Blocks of text joined by BLOCK_SEPARATOR, each remembered as a region of the joined text."""

    def __init__(self):
        self.parts: list[str] = []
        self.regions: list[Region] = []
        self.length = 0

    def add(self, block: str, label: str) -> None:
        block = block.strip()
        if not block:
            return
        if self.parts:
            self.parts.append(BLOCK_SEPARATOR)
            self.length += len(BLOCK_SEPARATOR)
        self.parts.append(block)
        self.regions.append((self.length, self.length + len(block), label))
        self.length += len(block)

    def result(self, **metadata) -> Extracted:
        return Extracted("".join(self.parts), tuple(self.regions), metadata)


def _unreadable(kind: str, err: Exception) -> ExtractionError:
    message = " ".join(str(err).split())[:200] or "(no message)"
    return ExtractionError(f"unreadable {kind}: {type(err).__name__}: {message}")


# ----------------------------------------------------------------------------------------------
# PDF


def extract_pdf(data: bytes) -> Extracted:
    require(EXTRA, "pypdf")
    from pypdf import PdfReader

    # A parser of untrusted files fails in many ways (pypdf raises its own errors, but also KeyError,
    # ValueError, … on a damaged file): whatever it raises makes this one file unreadable, not the run.
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # an empty user password opens many "protected" PDFs
            raise ExtractionError("encrypted: the PDF needs a password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except Exception as err:  # see above
        if "cryptography" in str(err):  # pypdf's DependencyError for AES-encrypted files
            raise ExtractionError(f"encrypted: {err}") from None
        raise _unreadable("PDF", err) from None
    builder = _TextBuilder()
    for number, text in enumerate(pages, 1):
        builder.add(text, f"page {number}")
    if not builder.parts:
        raise ExtractionError(f"no text layer: {len(pages)} page(s) without extractable text (scanned? no OCR)")
    return builder.result(format="pdf", pages=len(pages))


# ----------------------------------------------------------------------------------------------
# HTML

# Not text of the page: code, styling, invisible templates, form controls, site navigation and footers.
HTML_SKIPPED_TAGS = frozenset(
    {"script", "style", "noscript", "template", "head", "svg", "iframe", "object", "button", "select", "nav", "footer"}
)
HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Elements whose text is one block (a region); text of inline elements inside them joins theirs.
HTML_BLOCKS = HTML_HEADINGS | frozenset(
    {
        "p",
        "li",
        "dt",
        "dd",
        "td",
        "th",
        "pre",
        "blockquote",
        "caption",
        "figcaption",
        "div",
        "section",
        "article",
        "main",
        "aside",
        "header",
        "body",
        "table",
        "tr",
        "ul",
        "ol",
        "dl",
        "form",
        "address",
        "summary",
        "details",
        "figure",
    }
)
_SPACES = re.compile(r"\s+")


class _HtmlBlocks:
    """Walks the parsed page, cutting its text into blocks labelled by heading and element."""

    def __init__(self):
        self.builder = _TextBuilder()
        self.heading = ""  # "h2: 역사", the last heading seen
        self.counts: dict[str, int] = {}  # element → how many blocks of it under the current heading

    def walk(self, node, tag: str) -> None:
        from bs4 import NavigableString, Tag
        from bs4.element import PreformattedString  # comments, CDATA, doctype, processing instructions

        buffer: list[str] = []
        label: list[str] = []  # the element's label, given when it first has text (so p[3] is the 3rd p with text)
        for child in node.children:
            if isinstance(child, Tag):
                if child.name in HTML_SKIPPED_TAGS:
                    continue
                if child.name in HTML_BLOCKS:
                    self.emit(buffer, tag, label)
                    self.walk(child, child.name)
                elif child.name == "br":
                    buffer.append("\n")
                else:
                    buffer.append(_inline_text(child))
            elif isinstance(child, NavigableString) and not isinstance(child, PreformattedString):
                buffer.append(str(child))
        self.emit(buffer, tag, label)

    def emit(self, buffer: list[str], tag: str, label: list[str]) -> None:
        text = "".join(buffer)
        buffer.clear()
        if tag != "pre":  # whitespace is layout, except in preformatted text
            text = _SPACES.sub(" ", text)
        text = text.strip()
        if not text:
            return
        if not label:
            if tag in HTML_HEADINGS:
                self.heading, self.counts = f"{tag}: {_SPACES.sub(' ', text)[:80]}", {}
                label.append(self.heading)
            else:
                self.counts[tag] = self.counts.get(tag, 0) + 1
                element = f"{tag}[{self.counts[tag]}]"
                label.append(f"{self.heading} > {element}" if self.heading else element)
        self.builder.add(text, label[0])


def _inline_text(tag) -> str:
    """The text of an inline element, without the parts that are not text of the page."""
    from bs4 import NavigableString, Tag
    from bs4.element import PreformattedString

    parts = []
    for child in tag.children:
        if isinstance(child, Tag):
            if child.name in HTML_SKIPPED_TAGS:
                continue
            parts.append("\n" if child.name == "br" else _inline_text(child))
        elif isinstance(child, NavigableString) and not isinstance(child, PreformattedString):
            parts.append(str(child))
    return "".join(parts)


def extract_html(data: bytes) -> Extracted:
    require(EXTRA, "bs4")
    from bs4 import BeautifulSoup

    # html.parser (the standard library's): the same tree on every machine, whatever else is installed
    # (bs4 would pick lxml or html5lib when present, and they repair broken markup differently).
    # The encoding: bs4 reads a BOM or <meta charset>, else guesses (UTF-8 first).
    try:
        soup = BeautifulSoup(data, "html.parser")
    except Exception as err:  # html.parser is lenient; anything it raises is this file's fault
        raise _unreadable("HTML", err) from None
    blocks = _HtmlBlocks()
    blocks.walk(soup.body or soup, "body")
    if not blocks.builder.parts:
        raise ExtractionError("empty: the HTML page holds no text outside scripts, styles and navigation")
    return blocks.builder.result(format="html")


# ----------------------------------------------------------------------------------------------
# DOCX


def extract_docx(data: bytes) -> Extracted:
    require(EXTRA, "docx")
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        body = list(document.iter_inner_content())  # paragraphs and tables, in the order of the body
    except Exception as err:  # a damaged zip or XML part: this file is unreadable, not the run
        raise _unreadable("DOCX", err) from None
    builder = _TextBuilder()
    heading, paragraphs, tables = "", 0, 0
    for item in body:
        if isinstance(item, Table):
            tables += 1
            for row_number, row in enumerate(item.rows, 1):
                builder.add(" | ".join(_row_cells(row)), f"table {tables} > row {row_number}")
            continue
        text = item.text.strip()
        if not text:
            continue
        style = (item.style.name if item.style is not None else "") or ""
        if style.startswith(("Heading", "Title")):
            heading, paragraphs = " ".join(text.split())[:80], 0
            builder.add(text, f"heading: {heading}")
            continue
        paragraphs += 1
        builder.add(text, f"{heading} > paragraph {paragraphs}" if heading else f"paragraph {paragraphs}")
    if not builder.parts:
        raise ExtractionError("empty: the DOCX body holds no text")
    return builder.result(format="docx")


def _row_cells(row) -> list[str]:
    """The texts of a row's cells; a merged cell (python-docx repeats it for each grid column) once."""
    cells, seen = [], set()
    for cell in row.cells:
        if id(cell._tc) in seen:
            continue
        seen.add(id(cell._tc))
        text = " ".join(cell.text.split())
        if text:
            cells.append(text)
    return cells


# suffix → its extractor
EXTRACTORS: dict[str, Callable[[bytes], Extracted]] = {
    ".pdf": extract_pdf,
    ".html": extract_html,
    ".htm": extract_html,
    ".docx": extract_docx,
}


def location_of(regions: tuple[Region, ...] | list, start: int, end: int | None = None) -> str | None:
    """The label of the region holding offset `start` ("page 3"); for a span reaching further regions,
    "first – last" label. None for a document without regions (plain text) or an offset between them."""
    end = start + 1 if end is None else max(end, start + 1)
    labels = [label for s, e, label in regions if s < end and start < e]
    if not labels:
        return None
    return labels[0] if len(labels) == 1 else f"{labels[0]} – {labels[-1]}"
