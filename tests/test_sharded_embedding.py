"""Embedding a corpus over processes (kqa.retrieval.sharding, `accelerate launch -m kqa index`): the
same index as one process, resumable after a kill (complete chunks reused, counted), and a work folder
of another corpus never read. The launched runs are real `accelerate launch` processes joined over gloo
on CPU, with a tiny random BERT as the embedder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from kqa.cli import main
from kqa.retrieval import Embedder, PassageSettings, Retriever, load_corpus, split_corpus, store
from kqa.retrieval.sharding import (
    STOP_AFTER_ENV,
    WORK_DIR_NAME,
    EmbeddingStopped,
    chunk_path,
    chunk_ranges,
    embed_passages_sharded,
    process_device,
    share,
    work_fingerprint,
)
from kqa.retrieval.store import files_dir
from kqa.testing import build_char_tokenizer, reset_accelerate_state, tiny_bert_config

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐른다.",
    "부산은 대한민국에서 가장 큰 항구 도시이고 해운대 해수욕장이 유명하다.",
    "세종대왕은 1443년에 훈민정음을 창제하였고 1446년에 반포하였다.",
    "아이작 뉴턴은 영국의 물리학자로 만유인력의 법칙을 발견하였다.",
    "제주도는 한국에서 가장 큰 섬이며 한라산과 감귤로 유명하다.",
    "경복궁은 조선 왕조의 법궁으로 1395년에 지어졌다.",
]
PASSAGE_FLAGS = ["--passage_chars", "60", "--overlap_chars", "10"]
PASSAGES = PassageSettings(max_chars=60, overlap_chars=10)
CHUNK = 4


def _corpus(root: Path, variant: int = 0) -> Path:
    """Twelve documents of two to five sentences (so passages of unequal length), one file each."""
    root.mkdir(parents=True)
    for i in range(12):
        picked = [SENTENCES[(i + j * (variant + 1)) % len(SENTENCES)] for j in range(2 + i % 4)]
        (root / f"doc{i:02d}.txt").write_text(" ".join(picked), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    from transformers import BertModel

    directory = tmp_path_factory.mktemp("encoder")
    tokenizer = build_char_tokenizer([*SENTENCES, "query: passage: "])
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def embedder(encoder_dir) -> Embedder:
    return Embedder.from_pretrained(encoder_dir, device="cpu", batch_size=3)


@pytest.fixture
def cpu_state():
    """This process alone, as accelerate sees a plain `python` run (barriers return at once)."""
    from accelerate import PartialState

    reset_accelerate_state()
    yield PartialState(cpu=True)
    reset_accelerate_state()


def _index_argv(corpus: Path, out: Path, encoder: Path) -> list[str]:
    return [
        "index",
        *("--corpus", str(corpus), "--output_dir", str(out), "--embedding_model", str(encoder)),
        *("--analyzer", "bigrams", *PASSAGE_FLAGS, "--embedding_chunk_size", str(CHUNK), "--disable_tqdm"),
    ]


def _launch(argv: list[str], **env) -> subprocess.CompletedProcess:
    """`accelerate launch` of two processes on CPU: --multi_gpu is accelerate's torch.distributed
    launcher, which joins CPU processes over gloo when no GPU is visible (--cpu alone starts one)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no"]
    environment = {k: v for k, v in os.environ.items() if k != STOP_AFTER_ENV}
    environment.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [*launch, "-m", "kqa", *argv], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def _chunks(out: Path) -> list[Path]:
    return sorted((out / WORK_DIR_NAME).glob("*/chunk-*"))


# ================================================================================================
# accelerate launch, two processes


def test_two_processes_killed_then_resumed_give_the_single_process_index(tmp_path, encoder_dir, monkeypatch):
    corpus = _corpus(tmp_path / "corpus")
    for name in ("WORLD_SIZE", "ACCELERATE_MIXED_PRECISION"):  # the reference is a plain single-process run
        monkeypatch.delenv(name, raising=False)
    assert main(_index_argv(corpus, tmp_path / "single", encoder_dir)) == 0
    assert not (tmp_path / "single" / WORK_DIR_NAME).exists()  # one process embeds in memory, as before
    single = load_file(str(files_dir(tmp_path / "single") / "passages.safetensors"))
    chunks = len(chunk_ranges(len(single["doc"]), CHUNK))
    assert chunks >= 4, "the corpus must split into enough chunks for the test to mean anything"

    out = tmp_path / "sharded"
    killed = _launch(_index_argv(corpus, out, encoder_dir), **{STOP_AFTER_ENV: "1"})
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert "EmbeddingStopped" in killed.stderr and store.current_generation(out) is None
    # Each process stops after its first chunk; the launcher may end the slower one before it finishes
    # (leaving a temporary file, never a chunk's name), so one or two chunks are complete.
    left = [p for p in _chunks(out) if p.suffix == ".npy"]
    assert 1 <= len(left) <= 2, _chunks(out)
    assert (left[0].parent / "work.json").is_file()

    resumed = _launch(_index_argv(corpus, out, encoder_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"in {chunks} chunks of {CHUNK} over 2 process(es) on cpu" in resumed.stderr
    assert f"{len(left)} chunk(s) reused from {left[0].parent}, {chunks - len(left)} embedded" in resumed.stderr
    assert not (out / WORK_DIR_NAME).exists()  # merged into the index, then removed

    sharded = load_file(str(files_dir(out) / "passages.safetensors"))
    for name in ("doc", "start", "end"):
        assert np.array_equal(sharded[name], single[name]), name
    # Other batches (chunks are sorted by length on their own) pad differently; masked mean pooling
    # makes that float noise only.
    difference = float(np.abs(sharded["embeddings"] - single["embeddings"]).max())
    assert sharded["embeddings"].shape == single["embeddings"].shape and difference < 1e-5, difference
    manifests = [
        json.loads((files_dir(d) / "index.json").read_text(encoding="utf-8")) for d in (tmp_path / "single", out)
    ]
    for manifest in manifests:
        assert manifest.pop("build_seconds")["embed"] > 0
    assert manifests[0] == manifests[1]
    query = SENTENCES[2][:20]
    ranked = [[h.passage.id for h in Retriever.load(d).retrieve(query, k=5)] for d in (tmp_path / "single", out)]
    assert ranked[0] == ranked[1]


# ================================================================================================
# embed_passages_sharded in this process


def _texts(corpus: Path) -> list[str]:
    return [p.text for p in split_corpus(load_corpus(corpus)[0], PASSAGES)]


def test_a_stale_work_folder_of_another_corpus_is_not_reused(tmp_path, embedder, cpu_state):
    texts_a, texts_b = _texts(_corpus(tmp_path / "a")), _texts(_corpus(tmp_path / "b", variant=1))
    work = tmp_path / "work"
    first = embed_passages_sharded(embedder, texts_a, work, state=cpu_state, chunk_size=CHUNK)
    assert first.report.reused == 0 and first.report.chunks == len(chunk_ranges(len(texts_a), CHUNK))
    # The other corpus has chunks of the same names ready in its own folder; none is read.
    other = embed_passages_sharded(embedder, texts_b, work, state=cpu_state, chunk_size=CHUNK)
    assert other.report.work_dir != first.report.work_dir and other.report.reused == 0
    np.testing.assert_allclose(other.embeddings, embedder.embed_passages(texts_b), atol=1e-5)
    # The same corpus again: every chunk reused, the same array.
    again = embed_passages_sharded(embedder, texts_a, work, state=cpu_state, chunk_size=CHUNK)
    assert again.report.reused == again.report.chunks and np.array_equal(again.embeddings, first.embeddings)


def test_kqa_index_under_accelerate_notes_a_stale_work_folder_and_leaves_it(tmp_path, encoder_dir, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate launch sets: the chunked path
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.delenv(STOP_AFTER_ENV, raising=False)
    reset_accelerate_state()
    out = tmp_path / "index"
    stale = out / WORK_DIR_NAME / "0123456789abcdef"
    stale.mkdir(parents=True)
    np.save(stale / "chunk-0-4.npy", np.zeros((4, 64), dtype=np.float32))
    try:
        assert main(_index_argv(_corpus(tmp_path / "corpus"), out, encoder_dir)) == 0
    finally:
        reset_accelerate_state()
    err = capsys.readouterr().err
    assert "over 1 process(es) on cpu" in err and "0 chunk(s) reused" in err
    assert f"note: {stale} holds chunks of another corpus or model, not used" in err
    assert _chunks(out) == [stale / "chunk-0-4.npy"]
    assert not np.allclose(load_file(str(files_dir(out) / "passages.safetensors"))["embeddings"][:4], 0)


def test_interrupted_run_resumes_and_ignores_half_written_chunks(tmp_path, embedder, cpu_state, monkeypatch):
    texts = _texts(_corpus(tmp_path / "corpus"))
    work = tmp_path / "work"
    monkeypatch.setenv(STOP_AFTER_ENV, "2")
    with pytest.raises(EmbeddingStopped, match="stopped after 2 chunk"):
        embed_passages_sharded(embedder, texts, work, state=cpu_state, chunk_size=CHUNK)
    monkeypatch.delenv(STOP_AFTER_ENV)
    [folder] = work.iterdir()
    ranges = chunk_ranges(len(texts), CHUNK)
    assert all(chunk_path(folder, *r).is_file() for r in ranges[:2]) and not chunk_path(folder, *ranges[2]).exists()
    # A killed writer's temporary file, and a truncated file under a chunk's name (copied by hand, say).
    chunk_path(folder, *ranges[2]).with_suffix(".npy.123.tmp").write_bytes(b"\x93NUMPY")
    truncated = chunk_path(folder, *ranges[3])
    truncated.write_bytes(chunk_path(folder, *ranges[0]).read_bytes()[:100])
    result = embed_passages_sharded(embedder, texts, work, state=cpu_state, chunk_size=CHUNK)
    assert (result.report.reused, result.report.invalid) == (2, 1)
    assert (
        "2 chunk(s) reused" in result.report.summary()
        and "1 unreadable chunk(s) embedded again" in result.report.summary()
    )
    np.testing.assert_allclose(result.embeddings, embedder.embed_passages(texts), atol=1e-5)


def test_bad_stop_hook_value_is_named(tmp_path, embedder, cpu_state, monkeypatch):
    monkeypatch.setenv(STOP_AFTER_ENV, "two")
    with pytest.raises(ValueError, match=f"{STOP_AFTER_ENV}='two': expected a positive number of chunks"):
        embed_passages_sharded(embedder, ["가나다"], tmp_path, state=cpu_state)


# ================================================================================================
# the pieces


def test_shares_are_contiguous_and_cover_every_chunk_once():
    for n in range(0, 12):
        for processes in (1, 2, 3, 5):
            shares = [share(list(range(n)), processes, rank) for rank in range(processes)]
            assert sum(shares, []) == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)] and chunk_ranges(0, 4) == []
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunk_ranges(10, 0)


def test_the_work_fingerprint_names_texts_boundaries_and_model(embedder, encoder_dir):
    from kqa.retrieval import EmbedderSettings

    base = work_fingerprint(embedder, ["ab", "c"])
    assert work_fingerprint(embedder, ["ab", "c"]) == base
    assert work_fingerprint(embedder, ["a", "bc"]) != base and work_fingerprint(embedder, ["ab", "d"]) != base
    prefixed = Embedder(embedder.model, embedder.tokenizer, name="x", settings=EmbedderSettings(passage_prefix="p: "))
    assert work_fingerprint(prefixed, ["ab", "c"]) != base


def test_device_flag_must_agree_with_the_process_device(cpu_state):
    assert process_device(None, cpu_state) == process_device("cpu", cpu_state) == "cpu"
    with pytest.raises(ValueError, match="--device cuda: under accelerate launch each process embeds on its own"):
        process_device("cuda", cpu_state)
