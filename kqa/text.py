"""Unicode policy: compare and tokenise in NFC, but keep offsets into the user's own text.

Korean text sometimes arrives NFD-decomposed (a syllable such as "한" stored as the three conjoining
jamo U+1112 U+1161 U+11AB). Tokenizers and string comparison want one canonical form, so kqa works
in NFC; yet a prediction must be a slice of the context the user passed in. `nfc_with_alignment`
gives both: the NFC string and, for each NFC character, where it came from in the original.
"""

from __future__ import annotations

import unicodedata

import numpy as np

# Conjoining jamo that compose with a preceding character even though their combining class is 0.
_HANGUL_V = range(0x1161, 0x1176)
_HANGUL_T = range(0x11A8, 0x11C3)


def _starts_segment(ch: str) -> bool:
    """True when `ch` can never compose with the character before it."""
    cp = ord(ch)
    if cp in _HANGUL_V or cp in _HANGUL_T:
        return False
    return unicodedata.combining(ch) == 0


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
            normalized = unicodedata.normalize("NFC", text[seg_start:i])
            pieces.append(normalized)
            seg_len = i - seg_start
            # One output character per segment is the usual case; if a segment expands, spread its
            # characters over the segment's original positions without going past its end.
            origin.extend(seg_start + min(k, seg_len - 1) for k in range(len(normalized)))
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
