"""kqa.text: NFC normalisation with an alignment back to the original characters."""

from __future__ import annotations

import random
import re
import unicodedata

import numpy as np
import pytest

from kqa.text import check_text, decode_utf8, nfc_with_alignment, read_utf8_text, to_nfc


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


# --- hand-checked alignments -----------------------------------------------------------------------


def test_hangul_with_final_consonant_composes_and_points_at_each_syllable_start():
    # 한 = ᄒ ᅡ ᆫ, 국 = ᄀ ᅮ ᆨ: three conjoining jamo per syllable.
    text = "\u1112\u1161\u11ab\u1100\u116e\u11a8"
    nfc_text, origin = nfc_with_alignment(text)
    assert nfc_text == "한국"
    assert origin.tolist() == [0, 3, 6]


def test_hangul_without_final_consonant_composes_from_two_jamo():
    text = "\u1100\u1161\u1102\u1161"  # 가 나 = ᄀ ᅡ, ᄂ ᅡ
    nfc_text, origin = nfc_with_alignment(text)
    assert nfc_text == "가나"
    assert origin.tolist() == [0, 2, 4]


def test_nfd_hangul_round_trips_for_every_syllable_shape():
    # 가 (no final), 각 (final), 까 (double initial), 읽 (double final), 힣 (last syllable).
    for word in ["가", "각", "까", "읽", "힣", "한국어 문장"]:
        decomposed = nfd(word)
        assert decomposed != word or not any("가" <= ch <= "힣" for ch in word)
        nfc_text, origin = nfc_with_alignment(decomposed)
        assert nfc_text == word
        assert nfd(nfc_text) == decomposed
        assert origin[0] == 0 and origin[-1] == len(decomposed)


def test_latin_with_combining_accents_and_hangul_mixed():
    # "caf" + e + COMBINING ACUTE + " " + NFD 한 (3 jamo) + NFD 글 (ᄀ ᅳ ᆯ, 3 jamo)
    text = "cafe\u0301 \u1112\u1161\u11ab\u1100\u1173\u11af"
    nfc_text, origin = nfc_with_alignment(text)
    assert nfc_text == "café 한글"
    assert origin.tolist() == [0, 1, 2, 3, 5, 6, 9, 12]


def test_combining_marks_are_reordered_and_composed_within_one_character():
    # e + dot below (ccc 220) + circumflex (ccc 230) and the other order both compose to ệ.
    for text in ["e\u0323\u0302", "e\u0302\u0323"]:
        nfc_text, origin = nfc_with_alignment("x" + text + "y")
        assert nfc_text == "x\u1ec7y"
        assert origin.tolist() == [0, 1, 4, 5]


def test_mark_left_over_after_a_partial_composition_points_at_itself():
    # w + dot below composes to ẉ (U+1E89); the acute has no precomposed form with it and stays.
    nfc_text, origin = nfc_with_alignment("w\u0323\u0301z")
    assert nfc_text == "\u1e89\u0301z"
    assert origin.tolist() == [0, 2, 3, 4]


def test_mark_without_precomposed_form_stays_a_separate_character():
    text = "q\u0301" + nfd("한")  # q has no precomposed acute; the mark stays on its own
    nfc_text, origin = nfc_with_alignment(text)
    assert nfc_text == "q\u0301한"
    assert origin.tolist() == [0, 1, 2, 5]


def test_vowel_signs_of_combining_class_zero_compose_without_shifting_later_offsets():
    # Tamil ொ (U+0BCA) = U+0BC6 + U+0BBE; both parts have combining class 0 yet compose.
    text = "ab\u0b95\u0bc6\u0bbe" + "cd" * 30
    nfc_text, origin = nfc_with_alignment(text)
    assert nfc_text == nfc(text) == "ab\u0b95\u0bca" + "cd" * 30
    assert origin.tolist()[:6] == [0, 1, 2, 3, 5, 6]
    assert origin[-1] == len(text)
    # Every later character still maps to itself, one position further along.
    for i in range(4, len(nfc_text)):
        assert text[origin[i]] == nfc_text[i]


def test_already_nfc_text_gets_the_identity_alignment():
    text = "대한민국의 수도는 서울이다. café q\u0301"
    assert unicodedata.is_normalized("NFC", text)
    nfc_text, origin = nfc_with_alignment(text)
    assert nfc_text == text
    assert origin.dtype == np.int64
    np.testing.assert_array_equal(origin, np.arange(len(text) + 1))


def test_empty_text():
    nfc_text, origin = nfc_with_alignment("")
    assert nfc_text == ""
    assert origin.tolist() == [0]


@pytest.mark.parametrize("text", ["", "서울", nfd("서울"), "cafe\u0301", "e\u0302\u0323"])
def test_to_nfc_matches_unicodedata(text):
    assert to_nfc(text) == nfc(text)


# --- property tests over seeded random mixes ------------------------------------------------------


def _random_hangul(rng: random.Random, with_final: bool | None = None) -> str:
    initial, medial = rng.randrange(19), rng.randrange(21)
    if with_final is None:
        with_final = rng.random() < 0.5
    final = rng.randrange(1, 28) if with_final else 0
    return chr(0xAC00 + (initial * 21 + medial) * 28 + final)


# Units whose NFC characters each come from a contiguous run of original characters: every NFC span
# maps back to an original span with the same NFC form.
_LATIN_ACCENTED = ["e\u0301", "a\u0300", "o\u0308", "n\u0303", "c\u0327", "u\u031b", "e\u0323\u0302", "a\u0301\u0301"]
_NO_PRECOMPOSED = ["q\u0301", "x\u0308", "w\u0323\u0301"]  # already in canonical order
_COMPOSING_VOWEL_SIGNS = ["\u0b95\u0bc6\u0bbe", "\u0995\u09c7\u09be", "\u0c95\u0cbf\u0cd5"]  # Tamil, Bengali, Kannada
_PLAIN = list("abcXYZ019 .,?!()\"'-") + ["\n", "中", "の", "\u00a0"]


def _simple_unit(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return _random_hangul(rng)
    if kind == 1:
        return nfd(_random_hangul(rng))
    if kind == 2:
        unit = rng.choice(_LATIN_ACCENTED + _COMPOSING_VOWEL_SIGNS)
        return unit if rng.random() < 0.5 else nfc(unit)
    if kind == 3:
        return rng.choice(_NO_PRECOMPOSED)
    return rng.choice(_PLAIN)


# Marks out of canonical order: NFC reorders them, so one NFC character can come from original
# characters that are not next to each other. Only whole units can be mapped exactly.
_REORDERED = ["e\u0301\u0323", "q\u0301\u0323", "o\u0301\u031b\u0323"]


def _random_text(rng: random.Random, units: int, reordered: bool = False) -> tuple[str, list[str]]:
    parts = []
    for _ in range(units):
        parts.append(rng.choice(_REORDERED) if reordered and rng.random() < 0.2 else _simple_unit(rng))
    return "".join(parts), parts


def _check_alignment_shape(text: str, nfc_text: str, origin: np.ndarray) -> None:
    assert nfc_text == nfc(text)
    assert len(origin) == len(nfc_text) + 1
    assert origin[0] == 0 and origin[-1] == len(text)
    assert np.all(np.diff(origin) >= 0), "alignment must be monotonic"


def test_every_nfc_span_maps_to_an_original_span_with_the_same_nfc():
    rng = random.Random(20240611)
    for _ in range(300):
        text, _ = _random_text(rng, rng.randrange(1, 14))
        nfc_text, origin = nfc_with_alignment(text)
        _check_alignment_shape(text, nfc_text, origin)
        for a in range(len(nfc_text) + 1):
            for b in range(a, len(nfc_text) + 1):
                original_span = text[origin[a] : origin[b]]
                assert nfc(original_span) == nfc_text[a:b], (text, a, b)


def test_unit_boundaries_map_exactly_even_when_marks_are_reordered():
    rng = random.Random(7)
    for _ in range(300):
        text, parts = _random_text(rng, rng.randrange(1, 14), reordered=True)
        nfc_text, origin = nfc_with_alignment(text)
        _check_alignment_shape(text, nfc_text, origin)
        original_offset = nfc_offset = 0
        for part in parts:
            # Each unit starts with a character that composes with nothing before it, so the NFC of
            # the whole is the concatenation of the units' NFC forms, unit boundary for unit boundary.
            assert origin[nfc_offset] == original_offset, (text, part)
            original_offset += len(part)
            nfc_offset += len(nfc(part))
        assert nfc_offset == len(nfc_text)


# --- check_text and reading UTF-8 files --------------------------------------------------------------


def test_check_text_returns_valid_strings_unchanged():
    for value in ["", "서울", nfd("한국"), "emoji \U0001f600", "\ufeffbom inside"]:
        assert check_text(value, "somewhere") is value


def test_check_text_names_the_place_and_the_lone_surrogate():
    with pytest.raises(
        ValueError,
        match=r"^data\.json: question 3: holds a lone surrogate '\\ud800' at "
        r"character 3, which is not valid Unicode text",
    ):
        check_text("abc\ud800def", "data.json: question 3")
    with pytest.raises(ValueError, match=r"lone surrogate '\\udfff' at character 0"):
        check_text("\udfff", "x")
    # A pair written the wrong way round is two lone surrogates; the first is named.
    with pytest.raises(ValueError, match=r"lone surrogate '\\ude00' at character 1"):
        check_text("a\ude00\ud83d", "x")


@pytest.mark.parametrize("value", [None, 3, 1.5, b"bytes", ["a"]])
def test_check_text_rejects_what_is_not_a_string(value):
    with pytest.raises(ValueError, match=rf"^here: expected a string, got {type(value).__name__}$"):
        check_text(value, "here")


def test_decode_utf8_strips_one_byte_order_mark():
    assert decode_utf8("\ufeff서울".encode("utf-8"), "f") == "서울"
    assert decode_utf8(b"plain", "f") == "plain"
    # Only the first one is a byte-order mark; a second is text (U+FEFF) and is kept.
    assert decode_utf8(b"\xef\xbb\xbf\xef\xbb\xbfx", "f") == "\ufeffx"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"\xff", "line 1, column 1, byte offset 0"),
        (b"ab\ncd\xc3(", "line 2, column 3, byte offset 5"),
        (
            "가\n나다".encode() + b"\xed\xa0\x80",
            "line 2, column 3, byte offset 10",
        ),  # an encoded surrogate is not UTF-8
        (b"\xef\xbb\xbfa\n\xe4b", "line 2, column 1, byte offset 5"),  # offsets count the byte-order mark
        ("서울".encode("cp949"), "line 1, column 1, byte offset 0"),
    ],
)
def test_decode_utf8_names_source_line_column_and_byte(data, where):
    with pytest.raises(ValueError) as err:
        decode_utf8(data, "in.json")
    assert not isinstance(err.value, UnicodeError)
    assert str(err.value).startswith("in.json: not UTF-8 text")
    assert where in str(err.value)


def test_decode_utf8_recognises_utf16():
    with pytest.raises(ValueError, match=r"in\.json: not UTF-8 text: .*UTF-16"):
        decode_utf8("\ufeff{}".encode("utf-16-le"), "in.json")


def test_read_utf8_text_names_the_file(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\n\x80")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not UTF-8 text.*line 2, column 1"):
        read_utf8_text(path)
    path.write_bytes(b"\xef\xbb\xbfok")
    assert read_utf8_text(path) == "ok"
    with pytest.raises(FileNotFoundError):
        read_utf8_text(tmp_path / "missing.txt")


def test_blank_problem_names_how_a_text_is_blank():
    from kqa.text import blank_problem

    assert blank_problem("") == "empty"
    assert blank_problem(" \t\n\u3000") == "only whitespace"  # the ideographic space too
    assert blank_problem(" 서울 ") is None
