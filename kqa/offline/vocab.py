"""Vocabulary trimming: keep only the SentencePiece pieces a corpus actually uses.

multilingual-e5-small's word-embedding table is 250,037 x 384 (96M of its 117.5M parameters), yet a
Korean QA corpus touches a few tens of thousands of pieces. Trimming keeps

* every special token (`<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>`),
* the pieces of the e5 prefixes `"query: "` and `"passage: "`,
* the lowest-scoring piece of the full vocabulary — the Unigram model scores an unknown character
  at (lowest score - 10), so keeping it keeps that penalty, and with it `<unk>` handling, unchanged,
* every piece the full tokenizer produces on the corpus texts,

in their original order (specials keep ids 0-3), rebuilds the Unigram vocabulary with the kept
pieces and their original scores, and takes the matching rows of the embedding table. Since every
piece of the full tokenizer's best segmentation survives, the trimmed tokenizer produces the same
pieces on the corpus; `compare_tokenizations` checks that on every text rather than assuming it.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kqa.retrieval.corpus import CorpusError  # one error for a corpus that cannot be read
from kqa.retrieval.dense import E5_PASSAGE_PREFIX, E5_QUERY_PREFIX
from kqa.squad import paragraph_questions, squad_paragraphs
from kqa.text import read_utf8_text

E5_PREFIXES = (E5_QUERY_PREFIX, E5_PASSAGE_PREFIX)


def read_corpus_texts(paths: Sequence[str | Path]) -> list[str]:
    """Texts to trim the vocabulary for.

    A `.json` file is read as SQuAD/KorQuAD (`data` -> `paragraphs` -> `context`, `qas` -> `question`);
    any other file as UTF-8 text, one text per non-blank line.
    """
    texts: list[str] = []
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise CorpusError(f"corpus file not found: {path}")
        if path.suffix.lower() == ".json":
            texts.extend(_squad_texts(path))
        else:
            texts.extend(line for line in read_utf8_text(path).splitlines() if line.strip())
    return texts


def _squad_texts(path: Path) -> list[str]:
    try:
        doc = json.loads(read_utf8_text(path))  # a byte-order mark is accepted, as everywhere in kqa
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}: not valid JSON ({err})") from None
    texts: list[str] = []
    for paragraph in squad_paragraphs(doc, str(path), CorpusError):
        context = paragraph.paragraph.get("context")
        if not isinstance(context, str):
            raise CorpusError(f"{path}: {paragraph.path} has no string 'context'")
        texts.append(context)
        if "qas" not in paragraph.paragraph:  # contexts alone are enough to trim a vocabulary
            continue
        for item in paragraph_questions(paragraph, str(path), CorpusError):
            question = item.qa.get("question")
            if not isinstance(question, str):
                raise CorpusError(f"{path}: {item.path} has no string 'question'")
            texts.append(question)
    return texts


def _with_nfc_variants(texts: Iterable[str]) -> list[str]:
    # kqa tokenises the NFC form of the user's text; add it where it differs from the raw text
    out = []
    for text in texts:
        out.append(text)
        nfc = unicodedata.normalize("NFC", text)
        if nfc != text:
            out.append(nfc)
    return out


def used_token_ids(tokenizer, texts: Sequence[str]) -> set[int]:
    """Ids the (full) `tokenizers.Tokenizer` produces on `texts`, specials excluded."""
    used: set[int] = set()
    for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        used.update(enc.ids)
    return used


def lowest_score_piece(tokenizer_json: dict) -> int:
    scores = np.array([score for _, score in tokenizer_json["model"]["vocab"]], dtype=np.float64)
    return int(np.argmin(scores))


@dataclass(frozen=True)
class VocabTrim:
    kept_ids: np.ndarray  # int64, sorted: old ids of the kept pieces; new id = position in this array
    tokenizer_json: dict  # the trimmed tokenizer.json content
    corpus_texts: int
    full_vocab_size: int

    @property
    def kept_vocab_size(self) -> int:
        return int(self.kept_ids.size)

    def new_id(self, old_id: int) -> int:
        pos = int(np.searchsorted(self.kept_ids, old_id))
        if pos >= self.kept_ids.size or self.kept_ids[pos] != old_id:
            raise KeyError(f"token id {old_id} is not in the trimmed vocabulary")
        return pos


def _is_korean_or_common(ch: str) -> bool:
    """Hangul (syllables, jamo, compatibility jamo), ASCII, and script-less characters (digits,
    punctuation, symbols, spaces) — what Korean text is written with, whatever its topic."""
    cp = ord(ch)
    if (
        0xAC00 <= cp <= 0xD7A3
        or 0x1100 <= cp <= 0x11FF
        or 0x3130 <= cp <= 0x318F
        or 0xA960 <= cp <= 0xA97F
        or 0xD7B0 <= cp <= 0xD7FF
    ):
        return True
    return ch.isascii() or unicodedata.category(ch)[0] in "PSNZ"


def korean_script_piece_ids(tokenizer_json: dict) -> set[int]:
    """Ids of the pieces any Korean text may need: pieces written only in Hangul, ASCII, digits,
    punctuation and symbols, plus every single-character piece of any script (so Hanja, kana or
    accented letters inside Korean text are split into characters, never turned into `<unk>`).

    Unlike corpus pieces, this choice does not depend on the texts at hand, so a model trimmed this
    way reads unseen Korean text as well as the full vocabulary does (about 102k of 250k pieces for
    multilingual-e5-small)."""
    keep: set[int] = set()
    for piece_id, (piece, _score) in enumerate(tokenizer_json["model"]["vocab"]):
        body = piece.replace("\u2581", "")
        if len(body) <= 1 or all(_is_korean_or_common(ch) for ch in body):
            keep.add(piece_id)
    return keep


def trim_vocabulary(tokenizer_json: dict, texts: Sequence[str], *, keep_korean_script: bool = False) -> VocabTrim:
    """Choose the pieces to keep for `texts` (and, with `keep_korean_script`, every piece of
    `korean_script_piece_ids`) and build the trimmed tokenizer.json."""
    from tokenizers import Tokenizer

    _check_unigram(tokenizer_json)
    full = Tokenizer.from_str(json.dumps(tokenizer_json))
    keep = used_token_ids(full, _with_nfc_variants(list(texts)) + list(E5_PREFIXES))
    if keep_korean_script:
        keep |= korean_script_piece_ids(tokenizer_json)
    keep.update(tok["id"] for tok in tokenizer_json.get("added_tokens", []))
    keep.add(int(tokenizer_json["model"]["unk_id"]))
    keep.add(lowest_score_piece(tokenizer_json))
    kept_ids = np.array(sorted(keep), dtype=np.int64)
    return VocabTrim(
        kept_ids=kept_ids,
        tokenizer_json=remap_tokenizer_json(tokenizer_json, kept_ids),
        corpus_texts=len(texts),
        full_vocab_size=len(tokenizer_json["model"]["vocab"]),
    )


def _check_unigram(tokenizer_json: dict) -> None:
    model = tokenizer_json.get("model", {})
    if model.get("type") != "Unigram":
        raise ValueError(f"vocabulary trimming supports Unigram tokenizers, got model type {model.get('type')!r}")
    if model.get("byte_fallback"):
        raise ValueError("vocabulary trimming does not support byte_fallback Unigram models")
    if model.get("unk_id") is None:
        raise ValueError("vocabulary trimming needs a Unigram model with an unk_id")


def remap_tokenizer_json(tokenizer_json: dict, kept_ids: np.ndarray) -> dict:
    """A copy of `tokenizer_json` holding only `kept_ids` (sorted), every id reference renumbered."""
    _check_unigram(tokenizer_json)
    old_to_new = {int(old): new for new, old in enumerate(kept_ids.tolist())}

    def remap(old: int, what: str) -> int:
        if old not in old_to_new:
            raise ValueError(f"{what} (id {old}) must be kept when trimming the vocabulary")
        return old_to_new[old]

    out = copy.deepcopy({k: v for k, v in tokenizer_json.items() if k != "model"})
    model = {k: v for k, v in tokenizer_json["model"].items() if k != "vocab"}
    vocab = tokenizer_json["model"]["vocab"]
    model["vocab"] = [list(vocab[i]) for i in kept_ids.tolist()]
    model["unk_id"] = remap(int(model["unk_id"]), "the unknown token")
    out["model"] = model
    for tok in out.get("added_tokens", []):
        tok["id"] = remap(int(tok["id"]), f"added token {tok['content']!r}")
    if out.get("padding") and out["padding"].get("pad_id") is not None:
        out["padding"]["pad_id"] = remap(int(out["padding"]["pad_id"]), "the padding token")
    out["post_processor"] = _remap_post_processor(out.get("post_processor"), remap)
    return out


def _remap_post_processor(proc: dict | None, remap) -> dict | None:
    if proc is None:
        return None
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for name, special in proc.get("special_tokens", {}).items():
            special["ids"] = [remap(int(i), f"post-processor token {name!r}") for i in special["ids"]]
        return proc
    if kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("cls", "sep"):
            token, old = proc[key]
            proc[key] = [token, remap(int(old), f"post-processor token {token!r}")]
        return proc
    if kind == "Sequence":
        proc["processors"] = [_remap_post_processor(p, remap) for p in proc["processors"]]
        return proc
    if kind == "ByteLevel":
        return proc
    raise ValueError(f"vocabulary trimming does not know how to renumber a {kind!r} post-processor")


@dataclass(frozen=True)
class TokenizationMismatch:
    index: int
    text: str
    full_tokens: list[str]
    trimmed_tokens: list[str]


def vocabulary_pieces(tokenizer, texts: Sequence[str]) -> list[list[str]]:
    """Per text, the vocabulary entry of every token id.

    Not `Encoding.tokens`: for an unknown character the Unigram model reports the character itself
    as the token string while the id is `<unk>`'s, so only the ids tell a known piece from `<unk>`.
    """
    return [
        [tokenizer.id_to_token(i) for i in enc.ids]
        for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)
    ]


def compare_tokenizations(full, trimmed, texts: Sequence[str]) -> list[TokenizationMismatch]:
    """Texts on which the two `tokenizers.Tokenizer`s produce different vocabulary pieces."""
    mismatches = []
    for i, (a, b) in enumerate(zip(vocabulary_pieces(full, texts), vocabulary_pieces(trimmed, texts))):
        if a != b:
            mismatches.append(TokenizationMismatch(i, texts[i], a, b))
    return mismatches
