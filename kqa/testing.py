"""Tiny, offline building blocks for unit tests and smoke runs.

Everything here builds in seconds without the Hugging Face hub: a WordPiece tokenizer trained on
local text with the `tokenizers` library, a random-initialised small BERT config, and a handful of
hand-written Korean QA examples. Users can import these to unit-test their own stages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

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
        "context": "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다. 훈민정음은 오늘날 한글이라 불린다.",
        "question": "세종대왕이 창제한 문자는 무엇인가?",
        "answers": {"text": ["훈민정음"], "answer_start": [13]},
    },
    {
        "id": "ko-6",
        "title": "세종",
        "context": "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다. 훈민정음은 오늘날 한글이라 불린다.",
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
    articles: dict[str, dict] = {}
    for ex in examples:
        article = articles.setdefault(ex["title"], {"title": ex["title"], "paragraphs": []})
        paragraph = next((p for p in article["paragraphs"] if p["context"] == ex["context"]), None)
        if paragraph is None:
            paragraph = {"context": ex["context"], "qas": []}
            article["paragraphs"].append(paragraph)
        paragraph["qas"].append(
            {
                "id": ex["id"],
                "question": ex["question"],
                "answers": [
                    {"text": t, "answer_start": s}
                    for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"])
                ],
            }
        )
    return {"version": "KorQuAD_v1.0", "data": list(articles.values())}


def build_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 2000, save_dir: str | os.PathLike | None = None):
    """Train a small BERT-style WordPiece tokenizer on `texts` and wrap it as a fast tokenizer.

    The result behaves like `BertTokenizerFast` ([CLS] q [SEP] c [SEP], token_type_ids, offsets).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
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


def build_char_tokenizer(texts: Iterable[str], save_dir: str | os.PathLike | None = None):
    """A deterministic BERT-style character tokenizer: every character of `texts` (NFC) as a
    word-initial piece and as a `##` continuation. Unlike a trained vocabulary it never varies from
    run to run, which keeps tests that train on it reproducible."""
    import unicodedata

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({ch for text in texts for ch in unicodedata.normalize("NFC", text) if not ch.isspace()})
    vocab = {token: i for i, token in enumerate(specials + chars + [f"##{c}" for c in chars])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


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
