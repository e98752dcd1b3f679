"""Tiny, offline building blocks for unit tests and smoke runs.

Everything here builds in seconds without the Hugging Face hub: BERT-style WordPiece tokenizers over
local text (a fixed vocabulary computed in Python, the same on every run, or one trained with the
`tokenizers` library), a random-initialised small BERT config, a model whose span logits are set by
hand per token, and a handful of hand-written Korean QA examples. Users can import these to unit-test
their own stages.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from kqa.squad import squad_document

# Hand-written Korean QA examples in the flat SQuAD row layout used across kqa
# (id, title, context, question, answers{text, answer_start}, is_impossible).
KOREAN_EXAMPLES: list[dict] = [
    {
        "id": "ko-1",
        "title": "대한민국",
        "context": "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다. 서울특별시는 한강을 끼고 있다.",
        "question": "대한민국의 수도는 어디인가?",
        "answers": {"text": ["서울"], "answer_start": [10]},
    },
    {
        "id": "ko-2",
        "title": "대한민국",
        "context": "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다. 서울특별시는 한강을 끼고 있다.",
        "question": "가장 큰 항구 도시는 어디인가?",
        "answers": {"text": ["부산"], "answer_start": [28]},
    },
    {
        "id": "ko-3",
        "title": "뉴턴",
        "context": "아이작 뉴턴은 17세기 영국의 수학자이자 물리학자로, 미적분학과 고전역학의 기초를 다졌다.",
        "question": "아이작 뉴턴은 어느 나라 사람인가?",
        "answers": {"text": ["영국"], "answer_start": [13]},
    },
    {
        "id": "ko-4",
        "title": "뉴턴",
        "context": "아이작 뉴턴은 17세기 영국의 수학자이자 물리학자로, 미적분학과 고전역학의 기초를 다졌다.",
        "question": "뉴턴은 몇 세기 사람인가?",
        "answers": {"text": ["17세기"], "answer_start": [8]},
    },
    {
        "id": "ko-5",
        "title": "세종",
        "context": "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다. "
        "훈민정음은 오늘날 한글이라 불린다.",
        "question": "세종대왕이 창제한 문자는 무엇인가?",
        "answers": {"text": ["훈민정음"], "answer_start": [13]},
    },
    {
        "id": "ko-6",
        "title": "세종",
        "context": "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다. "
        "훈민정음은 오늘날 한글이라 불린다.",
        "question": "훈민정음은 언제 반포되었는가?",
        "answers": {"text": ["1446년"], "answer_start": [26]},
    },
]
for _ex in KOREAN_EXAMPLES:
    _ex.setdefault("is_impossible", False)
    for _t, _s in zip(_ex["answers"]["text"], _ex["answers"]["answer_start"]):
        assert _ex["context"][_s : _s + len(_t)] == _t, (_ex["id"], _t)


def korean_squad_json(examples: Iterable[dict] = KOREAN_EXAMPLES) -> dict:
    """Wrap flat examples in the nested SQuAD JSON layout (data → paragraphs → qas)."""
    return squad_document(examples, version="KorQuAD_v1.0", mark_impossible=False)


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_style_tokenizer(tok, save_dir=None):
    """Wrap a `tokenizers.Tokenizer` whose vocabulary holds SPECIAL_TOKENS as a BERT-style fast tokenizer
    ([CLS] q [SEP] c [SEP], token_type_ids, offsets)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def build_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 2000, save_dir: str | os.PathLike | None = None):
    """Train a small BERT-style WordPiece tokenizer on `texts` with the `tokenizers` trainer and wrap it
    as a fast tokenizer (used by `kqa make-tiny-model` and the benchmarks).

    The trainer is not bit-deterministic: the same texts can give a vocabulary that differs by an entry
    or in its ids from run to run and machine to machine. Tests that need a fixed vocabulary use
    `build_fixed_wordpiece_tokenizer` or `build_char_tokenizer` instead.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return _bert_style_tokenizer(tok, save_dir)


def fixed_wordpiece_vocab(texts: Iterable[str], vocab_size: int = 0) -> list[str]:
    """A WordPiece vocabulary computed deterministically from `texts` (NFC), in id order.

    First the special tokens, then every non-space character both as a word-initial piece and as a
    `##` continuation (sorted by code point), so no text of `texts` ever becomes [UNK]. Then, until
    `vocab_size` entries (never fewer than the characters need), the most frequent multi-character
    pieces: whole words as the BERT pre-tokenizer splits them (space and punctuation) and `##` word
    endings of 2-3 characters (Korean particles and verb endings), by count, ties by the piece itself.
    The same texts give the same list on every run, machine and thread count."""
    import unicodedata
    from collections import Counter

    from tokenizers import pre_tokenizers

    texts = [unicodedata.normalize("NFC", t) for t in texts]
    chars = sorted({ch for text in texts for ch in text if not ch.isspace()})
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    budget = vocab_size - len(vocab)
    if budget > 0:
        counts: Counter[str] = Counter()
        split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
        for text in texts:
            for word, _ in split(text):
                if len(word) > 1:
                    counts[word] += 1
                for n in (2, 3):
                    if len(word) > n:
                        counts[f"##{word[-n:]}"] += 1
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        vocab += [piece for piece, _ in ranked[:budget]]
    return vocab


def build_fixed_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int = 0, save_dir: str | os.PathLike | None = None
):
    """A BERT-style WordPiece tokenizer over `fixed_wordpiece_vocab(texts, vocab_size)`: multi-character
    word pieces like a trained one, but the same vocabulary and ids on every run."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {token: i for i, token in enumerate(fixed_wordpiece_vocab(texts, vocab_size))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return _bert_style_tokenizer(tok, save_dir)


def build_char_tokenizer(texts: Iterable[str], save_dir: str | os.PathLike | None = None):
    """A deterministic BERT-style character tokenizer: every character of `texts` (NFC) as a
    word-initial piece and as a `##` continuation. Unlike a trained vocabulary it never varies from
    run to run, which keeps tests that train on it reproducible."""
    return build_fixed_wordpiece_tokenizer(texts, vocab_size=0, save_dir=save_dir)


def token_scoring_model(
    tokenizer, start_scores: Mapping[str, float], end_scores: Mapping[str, float], *, hidden_size: int = 64
):
    """A `QuestionAnsweringModel` (a BERT with hand-set weights) whose logits depend only on each token:
    the start logit of a token is `start_scores.get(token, 0.0)`, its end logit `end_scores.get(token,
    0.0)`, whatever its position, segment or neighbours. Tokens are the tokenizer's vocabulary entries
    (e.g. "부", "##산"). It saves and loads like any kqa model, so a test can place the best span on
    chosen tokens of a chosen window and check exactly which characters come back.

    How: every embedding is a unit-variance, zero-mean combination of three orthogonal ±1 (Hadamard)
    vectors `p` (neutral), `q` (start) and `r` (end); position and segment embeddings, every attention
    and feed-forward weight are zero, so each encoder layer passes its input through and the last
    hidden state is the token's embedding; the head reads the `q` and `r` coordinates."""
    import torch

    from kqa.modeling import QuestionAnsweringModel

    if hidden_size < 4 or hidden_size & (hidden_size - 1):
        raise ValueError(f"hidden_size must be a power of 2 >= 4, got {hidden_size}")
    vocab = tokenizer.get_vocab()
    unknown = sorted((set(start_scores) | set(end_scores)) - set(vocab))
    if unknown:
        raise ValueError(f"not in the tokenizer's vocabulary: {unknown}")
    hadamard = torch.ones(1, 1, dtype=torch.float64)
    while hadamard.shape[0] < hidden_size:
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0)
    p, q, r = hadamard[1], hadamard[2], hadamard[3]  # zero mean, orthogonal, every entry ±1
    scale = max([1.0] + [math.hypot(start_scores.get(t, 0.0), end_scores.get(t, 0.0)) for t in vocab])

    config = tiny_bert_config(
        len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=hidden_size,
    )
    model = QuestionAnsweringModel.from_config(config).eval()
    embeddings = torch.zeros(len(tokenizer), hidden_size, dtype=torch.float64)
    for token, index in vocab.items():
        a, b = start_scores.get(token, 0.0) / scale, end_scores.get(token, 0.0) / scale
        embeddings[index] = math.sqrt(max(0.0, 1.0 - a * a - b * b)) * p + a * q + b * r
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.zero_()
            if "LayerNorm.weight" in name:
                param.fill_(1.0)
        model.backbone.embeddings.word_embeddings.weight.copy_(embeddings)
        model.qa_outputs.weight.copy_(torch.stack([q, r]) * (scale / hidden_size))
    return model


def tiny_bert_config(vocab_size: int, **overrides):
    """A random-init BERT small enough to train on CPU in seconds."""
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def shared_data_dir() -> Path | None:
    """`../shared/data` beside the project root (or $KQA_DATA_DIR), if present."""
    env = os.environ.get("KQA_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons (state, gradient state, partial state), so that the next
    `Accelerator` in this process starts from a clean slate: for tests that run several recipes in one process."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def build_hub_cache(
    cache_dir: str | os.PathLike,
    repo_id: str,
    files_from: str | os.PathLike,
    *,
    repo_type: str = "model",
    revision: str = "main",
) -> Path:
    """Place the files of the folder `files_from` in a Hugging Face hub cache as repository `repo_id` at
    `revision`, in the layout `huggingface_hub` reads (`models--org--name/refs/<revision>` holding a commit
    hash, `snapshots/<commit>/...`, each file a blob it links to). With `HF_HUB_CACHE=cache_dir` and
    `HF_HUB_OFFLINE=1`, hub ids then resolve to that snapshot through huggingface_hub's own code: the way
    to test hub code paths without the network. Returns the snapshot directory."""
    import hashlib
    import shutil

    source = Path(files_from)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{source}: no files to place in the hub cache")
    digest = hashlib.sha1(f"{repo_type}/{repo_id}@{revision}".encode())
    blobs: dict[Path, str] = {}
    for path in files:
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        blobs[path] = blob
        digest.update(f"{path.relative_to(source).as_posix()}:{blob}".encode())
    commit = digest.hexdigest()  # 40 hex digits, as a git commit id
    repo_root = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo_root / "snapshots" / commit
    (repo_root / "blobs").mkdir(parents=True, exist_ok=True)
    for path, blob in blobs.items():
        blob_path = repo_root / "blobs" / blob
        if not blob_path.exists():
            shutil.copyfile(path, blob_path)
        target = snapshot / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(os.path.relpath(blob_path, target.parent))
    (repo_root / "refs").mkdir(exist_ok=True)
    (repo_root / "refs" / revision).write_text(commit)
    return snapshot


def text_pdf(pages: Sequence[str | None]) -> bytes:
    """A PDF whose pages hold `pages`' text (one line per line of each string; None: a page with a drawn
    shape and no text, like a scan), written by hand so that a test needs no PDF writer and no font.

    The text is shown in a Type0 font with Identity-H encoding whose CIDs are the characters' code points,
    and the font's ToUnicode CMap maps each CID back to its character: what a PDF reader extracts is
    exactly the text given (Korean included). No font program is embedded: a viewer shows substitute
    glyphs, which extraction never looks at. Characters outside the Basic Multilingual Plane are refused."""
    chars = sorted({ch for page in pages if page for ch in page if ch != "\n"})
    if any(ord(ch) > 0xFFFF for ch in chars):
        raise ValueError("text_pdf writes characters of the Basic Multilingual Plane only")
    objects: list[bytes] = []  # object i + 1

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(data: bytes) -> bytes:
        return b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"

    cmap_lines = [
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /KQA-UCS def /CMapType 2 def",
        "1 begincodespacerange <0000> <FFFF> endcodespacerange",
    ]
    for i in range(0, len(chars), 100):  # a bfchar block holds at most 100 entries
        block = chars[i : i + 100]
        cmap_lines.append(f"{len(block)} beginbfchar")
        cmap_lines.extend(f"<{ord(ch):04X}> <{ord(ch):04X}>" for ch in block)
        cmap_lines.append("endbfchar")
    cmap_lines.append("endcmap CMapName currentdict /CMap defineresource pop end end")
    to_unicode = add(stream("\n".join(cmap_lines).encode("ascii")))
    descriptor = add(
        b"<< /Type /FontDescriptor /FontName /KQASans /Flags 4 /FontBBox [0 -120 1000 880] /ItalicAngle 0 "
        b"/Ascent 880 /Descent -120 /CapHeight 700 /StemV 80 >>"
    )
    cid_font = add(
        b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /KQASans /CIDSystemInfo << /Registry (Adobe) "
        b"/Ordering (Identity) /Supplement 0 >> /FontDescriptor %d 0 R /DW 1000 >>" % descriptor
    )
    font = add(
        b"<< /Type /Font /Subtype /Type0 /BaseFont /KQASans /Encoding /Identity-H "
        b"/DescendantFonts [%d 0 R] /ToUnicode %d 0 R >>" % (cid_font, to_unicode)
    )
    pages_id = len(objects) + 2 * len(pages) + 1  # after every page and its content stream
    page_ids = []
    for page in pages:
        if page is None:
            content = b"0.5 g 72 72 451 698 re f"  # a grey rectangle: marks on the page, no text
        else:
            lines = [b"BT /F1 12 Tf 14 TL 72 770 Td"]
            for line in page.split("\n"):
                lines.append(b"<%s> Tj T*" % "".join(f"{ord(ch):04X}" for ch in line).encode("ascii"))
            lines.append(b"ET")
            content = b"\n".join(lines)
        contents = add(stream(content))
        page_ids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 %d 0 R >> >> "
                b"/Contents %d 0 R >>" % (pages_id, font, contents)
            )
        )
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    assert add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages))) == pages_id
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out, offsets = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref)
    return bytes(out)
