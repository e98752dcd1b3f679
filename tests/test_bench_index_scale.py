"""The synthetic corpus of the retrieval scale benchmark (deterministic, realistic passage lengths,
e5-like vectors) and the benchmark itself, end to end at a tiny size with a tiny random embedder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import synthetic_corpus as sc  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real(data_dir):
    from kqa.retrieval.sparse import MorphemeAnalyzer

    passages = sc.real_passages(data_dir)
    return passages, sc.TextModel.fit(passages, MorphemeAnalyzer().analyze_many([p.text for p in passages]))


def _generate(model, seed: int, n: int) -> list:
    generator = sc.PassageGenerator(model, seed)
    return [generator.passage(i) for i in range(n)]


def test_the_generator_is_deterministic_and_the_seed_matters(real):
    _, model = real
    first, again, other = _generate(model, 0, 200), _generate(model, 0, 200), _generate(model, 1, 200)
    assert first == again
    assert sum(a.text != b.text for a, b in zip(first, other)) > 190


def test_passage_lengths_follow_the_real_passages(real):
    passages, model = real
    synthetic = np.array([len(p.text) for p in _generate(model, 0, 3000)])
    lengths = np.array([len(p.text) for p in passages])
    assert synthetic.max() <= lengths.max() and synthetic.min() > 0
    for q in (10, 25, 50, 75, 90):
        real_q, syn_q = np.percentile(lengths, q), np.percentile(synthetic, q)
        assert abs(syn_q - real_q) <= 0.1 * real_q, (q, real_q, syn_q)


def test_words_keep_the_real_distribution_and_new_ones_come_at_heaps_rate(real):
    passages, model = real
    generator = sc.PassageGenerator(model, 0)
    words = [w for i in range(2000) for w in generator.passage(i).text.split()]
    known = {w for p in passages for w in p.text.split()}
    new_share = sum(w not in known for w in words) / len(words)
    expected = generator.new_words / generator.words_made
    assert 0.01 < expected < 0.3  # the fitted Heaps' law gives a plausible rate of new terms
    assert abs(new_share - expected) < 0.03  # (a new word may by chance be a real one)
    # The most frequent real words stay the most frequent (Zipf's head is kept).
    from collections import Counter

    real_top = [w for w, _ in Counter(w for p in passages for w in p.text.split()).most_common(20)]
    synthetic_counts = Counter(words)
    assert len(set(real_top) & {w for w, _ in synthetic_counts.most_common(40)}) >= 15


def test_vectors_are_unit_deterministic_and_as_anisotropic_as_the_real_ones():
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(32)
    real = direction + 0.6 * rng.standard_normal((300, 32))  # a narrow cone, like e5's embeddings
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    sources = rng.integers(0, 300, size=(500, 2))
    a, b = sc.VectorModel(real, seed=3).vectors(sources), sc.VectorModel(real, seed=3).vectors(sources)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    mean_cos = lambda v: float((v @ v.T).mean())  # noqa: E731
    assert abs(mean_cos(a) - mean_cos(real)) < 0.1
    isotropic = rng.standard_normal((500, 32))
    isotropic /= np.linalg.norm(isotropic, axis=1, keepdims=True)
    assert mean_cos(real) - mean_cos(isotropic) > 0.3  # the check above would catch isotropic vectors
    # Each vector stays closest to its own sources among the real passages, more often than not.
    nearest = np.argmax(a @ real.T, axis=1)
    assert np.mean((nearest == sources[:, 0]) | (nearest == sources[:, 1])) > 0.5


def test_the_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path, data_dir):
    from transformers import BertModel

    from kqa.testing import build_char_tokenizer, tiny_bert_config

    texts = [p.text for p in sc.real_passages(data_dir)[:300]] + ["query: passage: ?"]
    tokenizer = build_char_tokenizer(texts)
    config = tiny_bert_config(len(tokenizer), hidden_size=32, num_hidden_layers=1, max_position_embeddings=64)
    model = BertModel(config, add_pooling_layer=False)
    model.save_pretrained(tmp_path / "embedder")
    tokenizer.save_pretrained(tmp_path / "embedder")
    out = tmp_path / "scale.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_index_scale.py"), "--passages", "2000"]
    command += ["--queries", "12", "--embed-sample", "8", "--profile", "5", "--backends", "inprocess,milvus"]
    command += ["--embedding-model", str(tmp_path / "embedder"), "--cache-dir", str(tmp_path / "cache")]
    command += ["--embedding-max-length", "64", "--data-dir", str(data_dir), "--out", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    size = result["results"][0]
    assert size["backend"] == "inprocess"
    assert size["passages"] == size["corpus"]["passages"] == 2000
    assert size["vocabulary"] > 1000 and size["terms"] > 50_000
    assert size["disk_mib"]["total"] > size["disk_mib"]["bm25/"] > 0 and size["disk_mib"]["passages.safetensors"] > 0
    assert size["memory_mib"]["vectors"] == pytest.approx(2000 * 32 * 4 / 2**20)
    assert size["embedding_estimate"]["estimated_s"] > 0
    for row in ("sparse", "dense exact, search only", "hybrid exact, search only", "hybrid exact + query embedding"):
        assert size["latency"][row]["n"] == 12 and 0 < size["latency"][row]["p50_ms"] <= size["latency"][row]["p95_ms"]
    assert set(size["hybrid_breakdown_ms"]) >= {"BM25 scores (bm25s)", "dense scores (matmul)", "fusion"}
    loaded = size["loaded"]  # the saved index, loaded by a fresh process as a server would
    assert loaded["passages"] == 2000 and loaded["index_mib"] > 0 and loaded["kiwi_mib"] > 0
    # What cannot run is named with its reason, in the JSON and the printed output.
    for what, why in result["skipped"].items():
        assert f"skipped {what}: {why}" in proc.stdout
    if "ann" in result["skipped"]:
        assert "ann" not in size
    else:
        assert 0.0 <= size["ann"]["ann_recall@10"] <= 1.0 and loaded["dense_search"] == "hnsw"
        sweep = size["ann"]["ef_search_sweep"]  # efSearch values measured on the same graph
        assert len(sweep) >= 2 and all(0.0 <= row["recall"] <= 1.0 and row["n"] == 12 for row in sweep.values())
    if "milvus" in result["skipped"]:
        assert len(result["results"]) == 1
    else:  # the engine, fed the same terms and vectors: the in-process index's exact rankings
        engine = result["results"][1]
        assert engine["backend"] == "milvus" and engine["passages"] == 2000
        for ranking in ("sparse (flat)", "dense (flat)", "hybrid (flat)"):
            assert engine["parity_with_inprocess_exact"][ranking]["identical"] == 12, ranking
        assert engine["latency"]["hybrid flat + query embedding"]["n"] == 12
        assert "2,000 passages, Milvus Lite: latency" in proc.stdout
    assert "2,000 passages: latency" in proc.stdout and result["command"]


def test_top_k_over_a_large_score_array_equals_a_full_sort():
    """top_k picks the k-th value with np.partition over the whole array (no index copy): the result is
    still the full sort's, ties at the cut included."""
    from kqa.retrieval.fusion import top_k

    rng = np.random.default_rng(0)
    scores = np.round(rng.standard_normal(300_000), 2).astype(np.float32)  # many ties everywhere
    before = scores.copy()
    for positive_only in (False, True):
        order = np.lexsort((np.arange(scores.size), -scores))
        if positive_only:
            order = order[scores[order] > 0]
        for k in (1, 10, 100, 1000):
            assert top_k(scores, k, positive_only=positive_only).tolist() == order[:k].tolist()
    np.testing.assert_array_equal(scores, before)  # the scores are not modified


def test_morpheme_terms_are_shared_strings_not_one_copy_per_occurrence():
    """The term lists of a whole corpus wait in memory for the BM25 build: a term met a million times
    is one string, not a million copies."""
    import tracemalloc

    from kqa.retrieval.sparse import MorphemeAnalyzer

    analyzer = MorphemeAnalyzer()
    texts = ["서울은 대한민국의 수도이다. 서울에는 한강이 흐른다."] * 200
    analyzer.analyze_many(texts[:2])  # warm-up: Kiwi's own first-call allocations
    tracemalloc.start()
    terms = analyzer.analyze_many(texts)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    first = terms[0]
    assert "서울" in first and all(t == first for t in terms)
    assert all(a is b for other in terms[1:] for a, b in zip(first, other))
    # 200 lists of ~6 references, not 1,200 strings of ~80 bytes
    assert held < 200 * (len(first) * 8 + 120) + 20_000, held


def test_dense_scores_equal_numpy_inner_products_on_writable_and_read_only_vectors():
    from kqa.retrieval.dense import DenseIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 24)).astype(np.float32)
    queries = rng.standard_normal((3, 24)).astype(np.float32)
    read_only = vectors.copy()
    read_only.setflags(write=False)
    for given in (vectors, read_only):
        scores = DenseIndex(given).scores(queries)
        assert scores.dtype == np.float32 and scores.shape == (3, 500)
        np.testing.assert_allclose(scores, queries @ vectors.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(DenseIndex(vectors).scores(queries[0]), queries[:1] @ vectors.T, rtol=1e-5, atol=1e-5)
