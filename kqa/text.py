"""Unicode policy: compare and tokenise in NFC, but keep offsets into the user's own text.

Korean text sometimes arrives NFD-decomposed (a syllable such as "한" stored as the three conjoining
jamo U+1112 U+1161 U+11AB). Tokenizers and string comparison want one canonical form, so kqa works
in NFC; yet a prediction must be a slice of the context the user passed in. `nfc_with_alignment`
gives both: the NFC string and, for each NFC character, where it came from in the original.

Input text is checked here too: `read_utf8_text` / `decode_utf8` read user files as UTF-8 (a leading
byte-order mark is accepted; bad bytes raise a ValueError naming file, line, column and byte), and
`check_text` rejects a string that cannot be encoded (a lone surrogate from a JSON "\\ud800" escape).
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Conjoining jamo that compose with a preceding character even though their combining class is 0.
_HANGUL_V = range(0x1161, 0x1176)
_HANGUL_T = range(0x11A8, 0x11C3)


@functools.cache
def _composing_starters() -> frozenset[str]:
    """Characters of combining class 0 that still compose with the character before them.

    Besides the Hangul jamo these are vowel signs of some Indic and Southeast Asian scripts (Tamil
    U+0BC6 U+0BBE → U+0BCA, Bengali, Kannada, Sinhala, ...). Read from the Unicode database that
    Python ships, so the set follows its Unicode version; built once, on the first non-NFC text.
    """
    found = set()
    for cp in range(0x110000):
        decomposition = unicodedata.decomposition(chr(cp))
        if not decomposition or decomposition.startswith("<"):
            continue  # no decomposition, or a compatibility one (NFC never composes those)
        parts = decomposition.split()
        if len(parts) == 2 and unicodedata.combining(second := chr(int(parts[1], 16))) == 0:
            found.add(second)
    return frozenset(found)


def _starts_segment(ch: str) -> bool:
    """True when `ch` can never compose with the character before it."""
    cp = ord(ch)
    if cp in _HANGUL_V or cp in _HANGUL_T:
        return False
    return unicodedata.combining(ch) == 0 and ch not in _composing_starters()


def _segment_origins(segment: str, normalized: str) -> list[int]:
    """For each character of `normalized` (the NFC of `segment`), its offset in `segment`.

    One output character per segment is the usual case. When a segment yields several (a base that
    composes with its first mark but not the next, as in w + dot below + acute → ẉ + acute), each
    NFC character starts where the shortest original prefix whose NFC is exactly the characters
    before it ends. Where no prefix fits (marks reordered by NFC, or one character expanding into
    several) positions are spread over the segment without going past its end.
    """
    if len(normalized) == 1:
        return [0]
    if normalized == segment:
        return list(range(len(segment)))
    offsets = [0]
    for k in range(1, len(normalized)):
        spread = max(offsets[-1], min(k, len(segment) - 1))
        prefix = normalized[:k]
        offsets.append(
            next(
                (
                    j
                    for j in range(offsets[-1] + 1, len(segment))
                    if unicodedata.normalize("NFC", segment[:j]) == prefix
                ),
                spread,
            )
        )
    return offsets


def nfc_with_alignment(text: str) -> tuple[str, np.ndarray]:
    """Return `(nfc_text, origin)` where `origin[i]` is the index in `text` of NFC character i.

    `origin` has `len(nfc_text) + 1` entries; the last is `len(text)`, so an NFC span `[a, b)` maps
    to the original span `[origin[a], origin[b])`. Already-NFC text (the common case) takes a fast
    path with the identity alignment.
    """
    if unicodedata.is_normalized("NFC", text):
        return text, np.arange(len(text) + 1, dtype=np.int64)

    # Normalise segment by segment (a segment = a starter plus everything that may compose into it),
    # so every NFC character can be traced to the segment that produced it.
    pieces: list[str] = []
    origin: list[int] = []
    seg_start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or _starts_segment(text[i]):
            segment = text[seg_start:i]
            normalized = unicodedata.normalize("NFC", segment)
            pieces.append(normalized)
            origin.extend(seg_start + offset for offset in _segment_origins(segment, normalized))
            seg_start = i
    nfc_text = "".join(pieces)
    if nfc_text != unicodedata.normalize("NFC", text):
        # Segment-wise normalisation disagreed with whole-string normalisation (an exotic sequence);
        # fall back to the whole-string form with a proportional, monotonic alignment.
        nfc_text = unicodedata.normalize("NFC", text)
        scale = len(text) / max(len(nfc_text), 1)
        origin = [min(int(k * scale), len(text) - 1) for k in range(len(nfc_text))]
    origin.append(len(text))
    return nfc_text, np.asarray(origin, dtype=np.int64)


def to_nfc(text: str) -> str:
    """NFC form of `text` (cheap when it already is NFC)."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def check_text(value: object, where: str) -> str:
    """`value` as a string that can be encoded as UTF-8, or a ValueError that names `where` and the
    problem (not a string; a lone surrogate, e.g. from JSON's "\\ud800", which tokenizers and Arrow
    cannot encode)."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{where}: holds a lone surrogate {value[err.start]!r} at character {err.start}, "
            "which is not valid Unicode text"
        ) from None
    return value


def blank_problem(value: str) -> str | None:
    """How a required text is blank, in the words every kqa error uses: "empty", "only whitespace",
    or None when it holds text."""
    if value.strip():
        return None
    return "only whitespace" if value else "empty"


UTF8_BOM = b"\xef\xbb\xbf"


class NotUtf8Error(ValueError):
    """Bytes that are not UTF-8 text; the message names the source, line, column and byte offset.

    `line` and `column` are 1-based (lines split at b"\\n", columns in characters); `offset` is the
    byte offset of the first bad byte in the file, counting a byte-order mark; `detail` is the
    message without the source (for callers that name the source their own way, e.g. `file:line:`).
    """

    def __init__(self, source: str, line: int, column: int, offset: int, detail: str):
        super().__init__(f"{source}: not UTF-8 text: {detail}")
        self.source, self.line, self.column, self.offset, self.detail = source, line, column, offset, detail


def decode_utf8(data: bytes, source: str) -> str:
    """`data` decoded as UTF-8, without a leading byte-order mark (which editors on Windows write and
    `json` refuses), or a `NotUtf8Error` (a ValueError) naming `source` and where the first bad byte is.

    Only one BOM, at the very start, is dropped; U+FEFF anywhere else is text. The readers of data
    files (`kqa.data`, `kqa.metric`, `kqa predict --input`) go through here, so they treat a BOM alike.
    """
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = skip + err.start
        line_start = data.rfind(b"\n", 0, offset) + 1
        line = data.count(b"\n", 0, offset) + 1
        # Everything before the first bad byte is valid UTF-8, so the column can be counted in characters.
        column = len(data[max(line_start, skip) : offset].decode("utf-8")) + 1
        bad = " ".join(f"0x{b:02x}" for b in data[offset : skip + err.end])
        detail = f"{err.reason} {bad} at line {line}, column {column}, byte offset {offset}"
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            detail += "; the file looks like UTF-16 (it starts with a UTF-16 byte-order mark): save it as UTF-8"
        else:
            detail += "; save the file as UTF-8 (a legacy encoding such as CP949 / EUC-KR is not read)"
        raise NotUtf8Error(source, line, column, offset, detail) from None


def read_utf8_text(path: str | Path) -> str:
    """The text of the file at `path` (see `decode_utf8`); `FileNotFoundError` when it does not exist."""
    return decode_utf8(Path(path).read_bytes(), str(path))


def iter_jsonl_objects(
    text: str, source: str, expected: str, error: type[ValueError] = ValueError
) -> Iterator[tuple[int, str, dict]]:
    """(line number, "source:line", object) for every non-blank line of JSON Lines `text`; a line that
    is not JSON, or not an object (`expected` says what it should hold), raises `error` naming
    source:line. Lines end at "\n" only (a "\r" before it is JSON whitespace)."""
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{source}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{where}: not valid JSON: {err}") from None
        if not isinstance(record, dict):
            raise error(f"{where}: expected {expected}, got {type(record).__name__}")
        yield line_no, where, record
