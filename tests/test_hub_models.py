"""Models by hub id (kqa.hub) through every entry, `.bin` weights only with the opt-in, and logits equal to
`transformers.AutoModelForQuestionAnswering`'s for every supported architecture.

Hub ids resolve through huggingface_hub's own code against a real hub cache that `kqa.testing.build_hub_cache`
fills, offline (`HF_HUB_OFFLINE=1`): the commands run as subprocesses with `HF_HUB_CACHE` set, the Python
entries in-process with huggingface_hub's constants patched the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kqa.hub import resolve_model_dir
from kqa.inference import QuestionAnswerer
from kqa.modeling import QuestionAnsweringModel
from kqa.testing import build_hub_cache, korean_squad_json, reset_accelerate_state, token_scoring_model

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16, "max_answer_length": 10}
MARK = 8.0
QUESTION, CONTEXT = "가장 큰 항구 도시는 어디인가?", "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다."


def _marked(tokenizer, start: str, end: str, out: Path) -> Path:
    """A saved model whose best span runs from the token `start` to the token `end` (e.g. 부 … ##산)."""
    model = token_scoring_model(tokenizer, {start: MARK}, {end: MARK})
    model.save_pretrained(out, tokenizer=tokenizer, kqa_config=SETTINGS)
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tokenizer) -> Path:
    """A hub cache holding org/name (answers 부산; at revision v2, 서울), org/legacy (pytorch_model.bin only),
    org/encoder (a BertModel without a span head) and org/hf-qa (a transformers BertForQuestionAnswering)."""
    from transformers import BertForQuestionAnswering, BertModel

    root = tmp_path_factory.mktemp("hub")
    cache = root / "cache"
    build_hub_cache(cache, "org/name", _marked(tokenizer, "부", "##산", root / "busan"))
    build_hub_cache(cache, "org/name", _marked(tokenizer, "서", "##울", root / "seoul"), revision="v2")

    legacy = _marked(tokenizer, "부", "##산", root / "legacy")
    model = QuestionAnsweringModel.from_pretrained(legacy)
    (legacy / "model.safetensors").unlink()
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    build_hub_cache(cache, "org/legacy", legacy)

    config = token_scoring_model(tokenizer, {}, {}).config
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    build_hub_cache(cache, "org/encoder", root / "encoder")
    BertForQuestionAnswering(config).save_pretrained(root / "hf-qa")
    tokenizer.save_pretrained(root / "hf-qa")
    build_hub_cache(cache, "org/hf-qa", root / "hf-qa")
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch) -> Path:
    """HF_HUB_CACHE and HF_HUB_OFFLINE for this process: huggingface_hub read both at import, so its
    constants are patched too."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def _run(hub_cache: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env={**env, "HOME": str(cwd)}
    )


# ---- resolution --------------------------------------------------------------------------------------


def test_a_hub_id_resolves_to_its_snapshot_and_a_directory_to_itself(offline_hub, tmp_path):
    snapshot = resolve_model_dir("org/name")
    assert snapshot.parent.parent.name == "models--org--name" and (snapshot / "model.safetensors").is_file()
    assert resolve_model_dir("org/name", revision="v2") != snapshot
    assert resolve_model_dir(tmp_path) == tmp_path
    assert resolve_model_dir("org/name", cache_dir=offline_hub, local_files_only=True) == snapshot


def test_python_entry_loads_a_hub_id_and_a_revision(offline_hub):
    assert QuestionAnswerer.from_pretrained("org/name", device="cpu")(QUESTION, CONTEXT).text == "부산"
    assert QuestionAnswerer.from_pretrained("org/name", revision="v2", device="cpu")(QUESTION, CONTEXT).text == "서울"
    model = QuestionAnsweringModel.from_pretrained("org/name")
    assert torch.equal(
        model.qa_outputs.weight, QuestionAnsweringModel.from_pretrained(resolve_model_dir("org/name")).qa_outputs.weight
    )


def test_missing_repositories_and_bad_names_are_clear_errors(offline_hub):
    with pytest.raises(FileNotFoundError, match=r"org/missing@main: not in the hub cache .* HF_HUB_OFFLINE=1"):
        QuestionAnswerer.from_pretrained("org/missing")
    with pytest.raises(FileNotFoundError, match=r"org/name@v9: not in the hub cache"):
        QuestionAnsweringModel.from_pretrained("org/name", revision="v9")
    with pytest.raises(FileNotFoundError, match=r"org/missing@main.*local_files_only=True"):
        resolve_model_dir("org/missing", local_files_only=True)
    with pytest.raises(FileNotFoundError, match=r"'no/such/dir' is neither an existing directory nor a hub id"):
        QuestionAnswerer.from_pretrained("no/such/dir")


def test_downloads_ask_for_safetensors_and_for_bin_only_when_opted_in_and_missing(tmp_path, monkeypatch):
    """What each snapshot_download call may fetch from a repository holding every kind of file."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    repo_files = ["config.json", "kqa_config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5"]
    repo_files += ["flax_model.msgpack", "tokenizer.json", "vocab.txt", "README.md", "sentencepiece.bpe.model"]
    calls: list[list[str]] = []
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()

    def fake_download(repo_id, *, allow_patterns, **kwargs):
        calls.append(sorted(filter_repo_objects(repo_files, allow_patterns=allow_patterns)))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    expected = ["config.json", "kqa_config.json", "model.safetensors", "sentencepiece.bpe.model"]
    expected += ["tokenizer.json", "vocab.txt"]
    (snapshot / "model.safetensors").write_bytes(b"")
    resolve_model_dir("org/both", allow_bin=True)
    assert calls == [expected]  # safetensors present: the .bin is never asked for
    calls.clear()
    (snapshot / "model.safetensors").unlink()
    resolve_model_dir("org/bin-only")
    assert calls == [expected]
    calls.clear()
    resolve_model_dir("org/bin-only", allow_bin=True)
    assert calls[1] == sorted([*expected[:2], "pytorch_model.bin", *expected[3:]])


# ---- .bin weights and encoders ---------------------------------------------------------------------


def test_bin_only_is_refused_then_loaded_with_the_opt_in(offline_hub):
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*--allow_bin_weights / allow_bin_weights=True"):
        QuestionAnswerer.from_pretrained("org/legacy", device="cpu")
    qa = QuestionAnswerer.from_pretrained("org/legacy", device="cpu", allow_bin_weights=True)
    assert qa(QUESTION, CONTEXT).text == "부산"


def test_an_encoder_without_a_span_head_says_to_train_it_first(offline_hub):
    with pytest.raises(
        ValueError, match=r"no qa_outputs.*Train it first: python train\.py --model_name_or_path org/encoder"
    ):
        QuestionAnswerer.from_pretrained("org/encoder", device="cpu")


# ---- the commands ----------------------------------------------------------------------------------


def test_kqa_predict_by_hub_id_with_revision_and_bin_opt_in(hub_cache, tmp_path):
    ask = ["-m", "kqa", "predict", "--question", QUESTION, "--context", CONTEXT, "--device", "cpu"]
    done = _run(hub_cache, *ask, "--model", "org/name", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == "부산"
    done = _run(hub_cache, *ask, "--model", "org/name", "--revision", "v2", cwd=tmp_path)
    assert json.loads(done.stdout)["text"] == "서울", done.stderr
    refused = _run(hub_cache, *ask, "--model", "org/legacy", cwd=tmp_path)
    assert refused.returncode == 2 and "--allow_bin_weights" in refused.stderr, refused.stderr
    done = _run(hub_cache, *ask, "--model", "org/legacy", "--allow_bin_weights", cwd=tmp_path)
    assert json.loads(done.stdout)["text"] == "부산", done.stderr
    missing = _run(hub_cache, *ask, "--model", "org/missing", cwd=tmp_path)
    assert missing.returncode == 2 and "org/missing@main: not in the hub cache" in missing.stderr, missing.stderr


def test_kqa_export_evaluate_and_ask_by_hub_id(hub_cache, tmp_path):
    from kqa.retrieval import Retriever
    from kqa.retrieval.corpus import Document
    from kqa.retrieval.retriever import RetrieverSettings

    done = _run(hub_cache, "-m", "kqa", "export", "--model", "org/name", "--output_dir", str(tmp_path / "onnx"))
    assert done.returncode == 0, done.stderr
    assert QuestionAnswerer.from_pretrained(tmp_path / "onnx")(QUESTION, CONTEXT).text == "부산"

    data = tmp_path / "ko.json"
    data.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "eval"
    done = _run(hub_cache, "evaluate.py", "--model", "org/name", "--data_file", str(data), "--output_dir", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "predictions.json").read_text(encoding="utf-8"))["ko-2"] == "부산"

    documents = [Document(id="a.txt", title="", text=CONTEXT, source="a.txt")]
    index = Retriever.build(documents, RetrieverSettings(method="sparse", analyzer="bigrams")).save(tmp_path / "ix")
    done = _run(hub_cache, "-m", "kqa", "ask", QUESTION, "--index", str(index), "--model", "org/name", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answers"][0]["text"] == "부산"


def test_kqa_serve_by_hub_id(hub_cache, tmp_path):
    import urllib.request

    from kqa.serving.harness import ServerProcess

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "PYTHONPATH": str(ROOT)}
    server = ServerProcess("org/name", ["--device", "cpu", "--revision", "v2"], log_path=tmp_path / "log", env=env)
    server.start()
    try:
        body = json.dumps({"question": QUESTION, "context": CONTEXT}, ensure_ascii=False).encode()
        request = urllib.request.Request(server.url + "/v1/answer", data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert json.loads(reply.read())["answers"][0]["text"] == "서울"
    finally:
        assert server.stop() in (0, -15), server.log_tail()


# ---- training continues from a hub id ----------------------------------------------------------------


def _train_config(model: str, cache: Path, out: Path, data: Path, **overrides):
    from kqa.training.config import TrainConfig

    return TrainConfig.from_flat(
        model_name_or_path=model,
        model_cache_dir=str(cache),
        train_files=[str(data)],
        dataset_name=None,
        max_seq_length=64,
        doc_stride=16,
        max_query_length=16,
        per_device_train_batch_size=4,
        max_train_steps=1,
        mixed_precision="no",
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        output_dir=str(out),
        disable_tqdm=True,
        **overrides,
    )


@pytest.mark.parametrize("repo", ["org/name", "org/hf-qa", "org/encoder"])
def test_training_starts_from_a_hub_id(repo, offline_hub, korean_squad_file, tmp_path):
    """A question-answering model (kqa's or transformers') continues with its own span head; an encoder
    gets a new one. The token given for the download is never written."""
    from safetensors.torch import load_file

    from kqa.training.recipe import QATrainingRecipe

    reset_accelerate_state()
    cfg = _train_config(repo, offline_hub, tmp_path / "run", korean_squad_file, model_token="hf_not_a_real_secret")
    recipe = QATrainingRecipe(cfg).setup()
    head = recipe.accelerator.unwrap_model(recipe.model).qa_outputs.weight
    saved = load_file(str(resolve_model_dir(repo) / "model.safetensors"))
    assert ("qa_outputs.weight" in saved and torch.equal(head, saved["qa_outputs.weight"])) == (repo != "org/encoder")
    written = (tmp_path / "run" / "train_config.yaml").read_text(encoding="utf-8")
    assert "model_cache_dir" in written and "hf_not_a_real_secret" not in written
    assert "model_token" not in cfg.to_flat_dict() and "hf_not_a_real_secret" not in repr(cfg)
    reset_accelerate_state()


def test_a_tokenizer_hub_id_is_fetched_from_the_models_cache(hub_cache, korean_squad_file, tmp_path, monkeypatch):
    """tokenizer_name_or_path as another hub id goes through model_cache_dir (here not the default cache)."""
    from huggingface_hub import constants

    from kqa.training.recipe import QATrainingRecipe

    empty = tmp_path / "default-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    reset_accelerate_state()
    cfg = _train_config(
        "org/name", hub_cache, tmp_path / "run", korean_squad_file, tokenizer_name_or_path="org/encoder"
    )
    recipe = QATrainingRecipe(cfg).setup()
    assert recipe.tokenizer.name_or_path == "org/encoder" and len(recipe.tokenizer) > 0
    reset_accelerate_state()


def test_training_from_a_bin_only_hub_id_needs_the_opt_in(offline_hub, korean_squad_file, tmp_path):
    from kqa.training.recipe import QATrainingRecipe

    reset_accelerate_state()
    with pytest.raises(ValueError, match="allow_bin_weights"):
        QATrainingRecipe(_train_config("org/legacy", offline_hub, tmp_path / "a", korean_squad_file)).setup()
    reset_accelerate_state()
    cfg = _train_config("org/legacy", offline_hub, tmp_path / "b", korean_squad_file, allow_bin_weights=True)
    assert QATrainingRecipe(cfg).setup().model is not None
    reset_accelerate_state()


# ---- parity with transformers ---------------------------------------------------------------------


def _tiny_config(architecture: str):
    from transformers import BertConfig, DebertaV2Config, ElectraConfig, RobertaConfig, XLMRobertaConfig

    common = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return {
        "bert": lambda: BertConfig(**common),
        "electra": lambda: ElectraConfig(embedding_size=16, **common),  # a projection between the two sizes
        "roberta": lambda: RobertaConfig(pad_token_id=1, **common),
        "xlm-roberta": lambda: XLMRobertaConfig(pad_token_id=1, **common),
        "deberta-v2": lambda: DebertaV2Config(relative_attention=True, position_buckets=8, **common),
    }[architecture]()


def _save_bin(model, out: Path, shards: int) -> None:
    """The `.bin` layout older transformers wrote: one pytorch_model.bin, or shards and their index."""
    model.config.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if shards == 1:
        torch.save(state, out / "pytorch_model.bin")
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = names[i::shards]
        torch.save({k: state[k] for k in part}, out / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("weights", ["safetensors", "bin", "sharded-bin"])
@pytest.mark.parametrize("architecture", ["bert", "electra", "roberta", "xlm-roberta", "deberta-v2"])
def test_logits_equal_transformers_question_answering_models(architecture, weights, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(0)
    reference = AutoModelForQuestionAnswering.from_config(_tiny_config(architecture)).eval()
    if weights == "safetensors":
        reference.save_pretrained(tmp_path)
    else:
        _save_bin(reference, tmp_path, shards=1 if weights == "bin" else 3)
        with pytest.raises(ValueError, match="allow_bin_weights"):
            QuestionAnsweringModel.from_pretrained(tmp_path)
    model = QuestionAnsweringModel.from_pretrained(tmp_path, allow_bin_weights=weights != "safetensors").eval()
    input_ids = torch.randint(3, 99, (3, 11), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padding
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = reference.config.pad_token_id or 0
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask)
        got = model(input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(got.start_logits, expected.start_logits)
    torch.testing.assert_close(got.end_logits, expected.end_logits)


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "kqa").mkdir(parents=True)
    assert resolve_model_dir("~/models/kqa") == tmp_path / "models" / "kqa"
