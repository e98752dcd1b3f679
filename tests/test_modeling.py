"""The span model: outputs, loss, checkpoints and compatibility with transformers' QA models."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import kqa
from kqa.modeling import (
    KQA_CONFIG_FILE,
    QAModelOutput,
    QuestionAnsweringModel,
    load_kqa_config,
    span_cross_entropy,
)

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".safetensors", ".h5", ".msgpack")


@pytest.fixture
def model(tiny_config) -> QuestionAnsweringModel:
    torch.manual_seed(0)
    return QuestionAnsweringModel.from_config(tiny_config).eval()


def _batch(vocab_size: int, batch_size: int = 3, seq_len: int = 11, *, token_types: bool = True, low: int = 5):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -3:] = 0  # a padded row
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_types:
        token_type_ids = torch.zeros_like(input_ids)
        token_type_ids[:, seq_len // 2 :] = 1
        batch["token_type_ids"] = token_type_ids
    return batch


def _manual_ce(logits: torch.Tensor, positions: list[int], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood over the rows whose position is inside the sequence; each row's
    softmax over its unpadded positions (`mask`)."""
    seq_len = logits.shape[1]
    rows = [(i, p) for i, p in enumerate(positions) if p < seq_len]
    nll = []
    for i, p in rows:
        real = logits[i].double() if mask is None else logits[i].double()[mask[i].bool()]
        nll.append(-(real.log_softmax(-1)[p]))
    return torch.stack(nll).mean()


def _weight_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))


# ---- forward and loss -------------------------------------------------------------------------------


def test_logits_have_one_score_per_token_and_no_loss_without_labels(model, tiny_config):
    out = model(**_batch(tiny_config.vocab_size, batch_size=3, seq_len=11))
    assert isinstance(out, QAModelOutput)
    assert out.loss is None
    assert out.start_logits.shape == (3, 11) and out.end_logits.shape == (3, 11)
    assert out.start_logits.dtype == torch.float32
    assert not torch.allclose(out.start_logits, out.end_logits)


def test_loss_is_the_mean_of_start_and_end_cross_entropy(model, tiny_config):
    batch = _batch(tiny_config.vocab_size)
    starts, ends = [0, 4, 7], [0, 6, 10]
    out = model(**batch, start_positions=torch.tensor(starts), end_positions=torch.tensor(ends))
    mask = batch["attention_mask"]  # row 0 is padded: its softmax leaves the padding out
    expected = (_manual_ce(out.start_logits, starts, mask) + _manual_ce(out.end_logits, ends, mask)) / 2
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # [batch, 1] labels (as some collators produce) mean the same thing
    column = model(**batch, start_positions=torch.tensor(starts)[:, None], end_positions=torch.tensor(ends)[:, None])
    assert column.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_positions_beyond_the_sequence_are_ignored(model, tiny_config):
    batch = _batch(tiny_config.vocab_size, batch_size=3, seq_len=11)
    starts, ends = [2, 11 + 7, 0], [3, 4, 11]  # row 1's start and row 2's end fall outside the sequence
    out = model(**batch, start_positions=torch.tensor(starts), end_positions=torch.tensor(ends))
    # start loss over rows 0 and 2 only, end loss over rows 0 and 1 only
    mask = batch["attention_mask"]
    expected = (_manual_ce(out.start_logits, starts, mask) + _manual_ce(out.end_logits, ends, mask)) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    far = model(**batch, start_positions=torch.tensor([2, 500, 0]), end_positions=torch.tensor([3, 4, 999]))
    assert far.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    # counting the out-of-range labels as the last token would give a different loss
    clamped_inside = ([2, 10, 0], [3, 4, 10])
    counted = (_manual_ce(out.start_logits, clamped_inside[0]) + _manual_ce(out.end_logits, clamped_inside[1])) / 2
    assert abs(counted.item() - out.loss.item()) > 1e-3


def test_bad_labels_raise_clear_errors(model, tiny_config):
    batch = _batch(tiny_config.vocab_size, batch_size=2)
    with pytest.raises(ValueError, match="both start_positions and end_positions"):
        model(**batch, start_positions=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=">= 0"):
        model(**batch, start_positions=torch.tensor([1, -100]), end_positions=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"end_positions must have shape \[batch\] = \[2\]"):
        model(**batch, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        span_cross_entropy(torch.zeros(2, 5), torch.zeros(2, 5), torch.tensor([1.0, 2.0]), torch.tensor([1, 2]))


def test_gradients_reach_every_encoder_weight_and_the_head(model, tiny_config):
    model.train()
    out = model(
        **_batch(tiny_config.vocab_size), start_positions=torch.tensor([1, 4, 6]), end_positions=torch.tensor([2, 5, 9])
    )
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"bert", "qa_outputs"}


def test_head_dropout_is_off_by_default_and_active_only_in_training(tiny_config):
    batch = _batch(tiny_config.vocab_size)  # tiny_config has no encoder dropout
    torch.manual_seed(0)
    plain = QuestionAnsweringModel.from_config(tiny_config).train()
    assert torch.equal(plain(**batch).start_logits, plain(**batch).start_logits)
    torch.manual_seed(0)
    dropped = QuestionAnsweringModel.from_config(tiny_config, head_dropout=0.5).train()
    assert not torch.equal(dropped(**batch).start_logits, dropped(**batch).start_logits)
    dropped.eval()
    assert torch.equal(dropped(**batch).start_logits, plain.eval()(**batch).start_logits)
    assert dropped.state_dict().keys() == plain.state_dict().keys()


def test_bf16_model_returns_bf16_logits_and_a_float32_loss(tiny_config):
    model = QuestionAnsweringModel.from_config(tiny_config, dtype=torch.bfloat16).eval()
    batch = _batch(tiny_config.vocab_size)
    out = model(**batch, start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([2, 3, 4]))
    assert out.start_logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    mask = batch["attention_mask"]
    expected = (_manual_ce(out.start_logits, [1, 2, 3], mask) + _manual_ce(out.end_logits, [2, 3, 4], mask)) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(model, tiny_config):
    batch = _batch(tiny_config.vocab_size)
    labels = {"start_positions": torch.tensor([1, 4, 6]), "end_positions": torch.tensor([2, 5, 9])}
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing and not model.is_gradient_checkpointing
    for m in (model, checkpointed):
        m.train()
        m(**batch, **labels).loss.backward()
    for (name, a), (_, b) in zip(model.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    checkpointed.gradient_checkpointing_disable()
    assert not checkpointed.is_gradient_checkpointing


def test_head_is_initialised_like_transformers(model, tiny_config):
    assert model.backbone is model.bert and model.config is model.bert.config
    assert model.bert.pooler is None  # built without the unused pooler
    assert torch.count_nonzero(model.qa_outputs.bias) == 0
    std = model.qa_outputs.weight.std().item()
    assert 0.5 * tiny_config.initializer_range < std < 1.5 * tiny_config.initializer_range


def test_num_parameters_matches_the_transformers_qa_model(model, tiny_config):
    from transformers import BertForQuestionAnswering

    reference = BertForQuestionAnswering(tiny_config)
    assert model.num_parameters() == sum(p.numel() for p in reference.parameters())
    model.bert.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == 2 * tiny_config.hidden_size + 2


# ---- checkpoints ------------------------------------------------------------------------------------


def test_save_and_load_round_trip(model, tiny_config, tiny_tokenizer, tmp_path):
    batch = _batch(tiny_config.vocab_size)
    settings = {"max_seq_length": 384, "doc_stride": 128, "max_answer_length": 30, "n_best_size": 20}
    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer, kqa_config=settings)
    loaded = QuestionAnsweringModel.from_pretrained(tmp_path / "m").eval()
    expected, got = model(**batch), loaded(**batch)
    assert torch.equal(expected.start_logits, got.start_logits) and torch.equal(expected.end_logits, got.end_logits)
    assert load_kqa_config(tmp_path / "m") == {**settings, "kqa_version": kqa.__version__}
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    assert (tmp_path / "m" / "tokenizer.json").is_file()


def test_saved_config_has_two_labels_whatever_the_encoder_config_said(tiny_config, tmp_path):
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    tiny_config.num_labels = 5  # e.g. an encoder taken from a 5-class classifier
    QuestionAnsweringModel.from_config(tiny_config).save_pretrained(tmp_path / "m")
    assert AutoConfig.from_pretrained(str(tmp_path / "m")).num_labels == 2
    assert AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "m")).qa_outputs.out_features == 2


def test_saved_weights_are_only_safetensors_in_the_transformers_layout(model, tiny_config, tmp_path):
    from safetensors import safe_open
    from transformers import BertForQuestionAnswering

    (tmp_path / "m").mkdir()
    torch.save({}, tmp_path / "m" / "pytorch_model.bin")  # a stale file from an earlier writer
    model.save_pretrained(tmp_path / "m")
    assert _weight_files(tmp_path / "m") == ["model.safetensors"]
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert metadata["format"] == "pt"
    assert keys == set(BertForQuestionAnswering(tiny_config).state_dict())
    assert not any("pooler" in k for k in keys)


def test_shared_tensors_are_stored_once_and_restored(model, tiny_config, tmp_path):
    from safetensors import safe_open

    layers = model.bert.encoder.layer
    layers[1].intermediate.dense.weight = layers[0].intermediate.dense.weight  # tie two layers' weights
    model.save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        assert len(list(f.keys())) == len(model.state_dict()) - 1
    loaded = QuestionAnsweringModel.from_pretrained(tmp_path / "m").eval()
    batch = _batch(tiny_config.vocab_size)
    assert torch.equal(model(**batch).start_logits, loaded(**batch).start_logits)


def test_a_given_state_dict_is_saved_instead_of_the_modules_own_tensors(model, tiny_config, tmp_path):
    """What the loop does under FSDP / ZeRO-3: the module holds a shard, the gathered state dict is saved."""
    full = {k: v.clone() for k, v in model.state_dict().items()}
    layers = model.bert.encoder.layer
    full["bert.encoder.layer.1.intermediate.dense.weight"] = full["bert.encoder.layer.0.intermediate.dense.weight"]
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    model.save_pretrained(tmp_path / "m", state_dict=full)
    loaded = QuestionAnsweringModel.from_pretrained(tmp_path / "m").state_dict()
    assert loaded.keys() == full.keys()
    for key, value in full.items():
        assert torch.equal(loaded[key], value), key
    assert layers[0].intermediate.dense.weight.abs().sum() == 0  # the module itself was not touched
    incomplete = {k: v for k, v in full.items() if not k.startswith("qa_outputs")}
    with pytest.raises(ValueError, match="lacks .*qa_outputs.*gathered"):
        model.save_pretrained(tmp_path / "bad", state_dict=incomplete)


def test_pickle_only_directory_is_refused_without_unpickling(model, tmp_path, monkeypatch):
    directory = tmp_path / "legacy"
    directory.mkdir()
    model.export_config().save_pretrained(str(directory))
    torch.save(model.state_dict(), directory / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*safetensors"):
        QuestionAnsweringModel.from_pretrained(directory)


def test_loading_errors_name_the_directory_and_the_problem(tiny_config, tmp_path):
    from transformers import BertModel

    with pytest.raises(FileNotFoundError, match="from_backbone"):
        QuestionAnsweringModel.from_pretrained(tmp_path / "nowhere")
    encoder_dir = tmp_path / "encoder"
    BertModel(tiny_config, add_pooling_layer=False).save_pretrained(encoder_dir)
    with pytest.raises(ValueError, match=r"encoder.*from_backbone"):
        QuestionAnsweringModel.from_pretrained(encoder_dir)
    qa_dir = tmp_path / "qa"
    QuestionAnsweringModel.from_config(tiny_config).save_pretrained(qa_dir)
    config = json.loads((qa_dir / "config.json").read_text())
    (qa_dir / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 3}))
    with pytest.raises(ValueError, match=r"qa.*word_embeddings.weight has shape"):
        QuestionAnsweringModel.from_pretrained(qa_dir)


def test_kqa_config_is_optional_and_validated(model, tmp_path):
    assert load_kqa_config(tmp_path) == {}
    (tmp_path / KQA_CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=KQA_CONFIG_FILE):
        load_kqa_config(tmp_path)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        model.save_pretrained(tmp_path / "m", kqa_config={"bad": object()})


class MLPSpanModel(QuestionAnsweringModel):
    """A different head on the same encoder: the documented way to swap the head."""

    def __init__(self, backbone, **kwargs):
        super().__init__(backbone, **kwargs)
        hidden = self.config.hidden_size
        self.qa_outputs = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 2)
        )


def test_a_subclass_with_another_head_round_trips_without_claiming_a_transformers_class(tiny_config, tmp_path):
    model = MLPSpanModel.from_config(tiny_config).eval()
    assert not model.has_transformers_layout()
    model.save_pretrained(tmp_path / "mlp")
    assert json.loads((tmp_path / "mlp" / "config.json").read_text()).get("architectures") is None
    loaded = MLPSpanModel.from_pretrained(tmp_path / "mlp").eval()
    batch = _batch(tiny_config.vocab_size)
    assert torch.equal(model(**batch).end_logits, loaded(**batch).end_logits)
    with pytest.raises(ValueError, match=r"mlp.*no place for: qa_outputs\.0\.bias"):
        QuestionAnsweringModel.from_pretrained(tmp_path / "mlp")


# ---- starting from an encoder -------------------------------------------------------------------------


def test_from_backbone_loads_the_encoder_and_makes_a_fresh_head(tiny_config, tmp_path):
    from transformers import BertModel

    torch.manual_seed(3)
    encoder = BertModel(tiny_config)  # with a pooler, like hub BERT checkpoints
    encoder.save_pretrained(tmp_path / "encoder")
    torch.manual_seed(4)
    first = QuestionAnsweringModel.from_backbone(tmp_path / "encoder")
    torch.manual_seed(5)
    second = QuestionAnsweringModel.from_backbone(tmp_path / "encoder")
    for model in (first, second):
        assert torch.equal(model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
        assert torch.equal(
            model.bert.encoder.layer[1].output.dense.weight, encoder.encoder.layer[1].output.dense.weight
        )
        assert model.bert.pooler is None
        assert torch.count_nonzero(model.qa_outputs.bias) == 0
    assert not torch.equal(first.qa_outputs.weight, second.qa_outputs.weight)  # the head is new each time


def test_from_backbone_on_a_qa_checkpoint_keeps_the_encoder_and_replaces_the_head(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    torch.manual_seed(9)
    restarted = QuestionAnsweringModel.from_backbone(tmp_path / "m")
    assert torch.equal(
        restarted.bert.encoder.layer[0].attention.self.query.weight,
        model.bert.encoder.layer[0].attention.self.query.weight,
    )
    assert not torch.equal(restarted.qa_outputs.weight, model.qa_outputs.weight)


def test_from_backbone_config_overrides_and_dtype(tiny_config, tmp_path):
    from transformers import BertModel

    encoder = BertModel(tiny_config, add_pooling_layer=False).to(torch.bfloat16)
    encoder.save_pretrained(tmp_path / "bf16")
    model = QuestionAnsweringModel.from_backbone(tmp_path / "bf16", hidden_dropout_prob=0.25)
    assert model.config.hidden_dropout_prob == 0.25
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # float32 master weights
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight.float())
    with pytest.raises(ValueError, match="hidden_dropout_rate"):
        QuestionAnsweringModel.from_backbone(tmp_path / "bf16", hidden_dropout_rate=0.1)


# ---- other encoders -------------------------------------------------------------------------------------


def _roberta_config():
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def _xlmr_config():
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def _electra_config():
    from transformers import ElectraConfig

    return ElectraConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )


def _distilbert_config():
    from transformers import DistilBertConfig

    return DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=40)


ENCODERS = [
    (_roberta_config, "roberta", "RobertaForQuestionAnswering"),
    (_xlmr_config, "roberta", "XLMRobertaForQuestionAnswering"),
    (_electra_config, "electra", "ElectraForQuestionAnswering"),
    (_distilbert_config, "distilbert", "DistilBertForQuestionAnswering"),
]


@pytest.mark.parametrize("make_config, prefix, qa_class", ENCODERS, ids=[e[2] for e in ENCODERS])
def test_other_encoders_match_their_transformers_qa_class(make_config, prefix, qa_class, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(0)
    model = QuestionAnsweringModel.from_config(make_config()).eval()
    assert model.backbone_prefix == prefix and getattr(model, prefix) is model.backbone
    reference = AutoModelForQuestionAnswering.from_config(make_config())
    assert type(reference).__name__ == qa_class
    assert set(model.state_dict()) == set(reference.state_dict())

    batch = _batch(100, token_types=False)  # these tokenizers emit no token_type_ids
    out = model(**batch, start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([4, 5, 6]))
    assert out.start_logits.shape == (3, 11) and torch.isfinite(out.loss)

    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == [qa_class]
    transformers_model = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "m")).eval()
    assert type(transformers_model).__name__ == qa_class
    with torch.no_grad():
        theirs = transformers_model(**batch)
    torch.testing.assert_close(theirs.start_logits, out.start_logits.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs.end_logits, out.end_logits.detach(), atol=1e-5, rtol=0)
    reloaded = QuestionAnsweringModel.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(reloaded(**batch).start_logits, out.start_logits)


def test_token_type_ids_for_an_encoder_without_them_is_a_clear_error():
    model = QuestionAnsweringModel.from_config(_distilbert_config())
    with pytest.raises(ValueError, match="DistilBertModel takes no token_type_ids"):
        model(**_batch(100, token_types=True))


# ---- transformers interoperability ------------------------------------------------------------------


def _encode(tokenizer, question: str, context: str):
    return tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")


def test_saved_directory_is_a_working_transformers_qa_model(model, tiny_tokenizer, korean_examples, tmp_path):
    """AutoModelForQuestionAnswering + AutoTokenizer on a kqa directory: the same logits as kqa, and a
    span decoded from them is a piece of the context."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    transformers_model = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "m")).eval()
    example = korean_examples[0]
    encoding = _encode(tokenizer, example["question"], example["context"])
    offsets = encoding.pop("offset_mapping")[0]
    with torch.no_grad():
        theirs = transformers_model(**encoding)
        ours = model(**encoding)
    torch.testing.assert_close(theirs.start_logits, ours.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs.end_logits, ours.end_logits, atol=1e-5, rtol=0)

    context_tokens = [i for i, s in enumerate(encoding.sequence_ids(0)) if s == 1]
    start, end = max(
        ((s, e) for s in context_tokens for e in context_tokens if s <= e < s + 10),
        key=lambda se: theirs.start_logits[0, se[0]] + theirs.end_logits[0, se[1]],
    )
    answer = example["context"][offsets[start][0] : offsets[end][1]]
    assert answer and answer in example["context"]


def test_saved_directory_runs_in_the_transformers_pipeline(model, tiny_tokenizer, korean_examples, tmp_path):
    import transformers
    from transformers.pipelines import SUPPORTED_TASKS

    if "question-answering" not in SUPPORTED_TASKS:
        pytest.skip(f"transformers {transformers.__version__} has no question-answering pipeline (removed in 5.x)")
    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    qa = transformers.pipeline("question-answering", model=str(tmp_path / "m"), tokenizer=str(tmp_path / "m"))
    example = korean_examples[0]
    result = qa(question=example["question"], context=example["context"])
    assert result["answer"] and result["answer"] in example["context"]
    assert example["context"][result["start"] : result["end"]] == result["answer"]


def test_a_transformers_qa_checkpoint_loads_in_kqa(tiny_config, tmp_path):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    reference = BertForQuestionAnswering(tiny_config).eval()
    reference.save_pretrained(tmp_path / "hf")
    model = QuestionAnsweringModel.from_pretrained(tmp_path / "hf").eval()
    batch = _batch(tiny_config.vocab_size)
    with torch.no_grad():
        expected = reference(**batch)
    torch.testing.assert_close(model(**batch).start_logits, expected.start_logits, atol=1e-5, rtol=0)
    assert load_kqa_config(tmp_path / "hf") == {}


# ---- a model with hand-set span logits (kqa.testing) ----------------------------------------------------


def test_token_scoring_model_scores_each_token_by_the_table_alone(tiny_tokenizer, tmp_path):
    from kqa.testing import token_scoring_model

    start_scores, end_scores = {"부": 8.0, "서": -3.0, "##울": 2.5}, {"##산": 8.0, "##울": 6.0}
    model = token_scoring_model(tiny_tokenizer, start_scores, end_scores)
    vocab = tiny_tokenizer.get_vocab()
    start_table = torch.zeros(len(tiny_tokenizer))
    end_table = torch.zeros(len(tiny_tokenizer))
    for token, score in start_scores.items():
        start_table[vocab[token]] = score
    for token, score in end_scores.items():
        end_table[vocab[token]] = score
    # Random ids with the marked tokens in them, two segments and a padded row: position, segment and
    # neighbours make no difference.
    batch = _batch(len(tiny_tokenizer), batch_size=4, seq_len=40)
    batch["input_ids"][1, ::3] = vocab["부"]
    batch["input_ids"][2, 5:9] = torch.tensor([vocab["서"], vocab["##울"], vocab["##산"], vocab["##울"]])
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.start_logits, start_table[batch["input_ids"]], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.end_logits, end_table[batch["input_ids"]], atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    with torch.no_grad():
        loaded = QuestionAnsweringModel.from_pretrained(tmp_path / "m").eval()(**batch)
    assert torch.equal(loaded.start_logits, out.start_logits) and torch.equal(loaded.end_logits, out.end_logits)
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        token_scoring_model(tiny_tokenizer, {"없는토큰": 1.0}, {})


def test_span_loss_does_not_depend_on_padding(model, tiny_config):
    """The same windows padded to two lengths (as two batchings would) have the same loss; without the
    mask in the softmax the extra padding positions would change it."""
    torch.manual_seed(3)
    ids = torch.randint(5, tiny_config.vocab_size, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    starts, ends = torch.tensor([1, 2, 0]), torch.tensor([3, 4, 0])
    model.eval()
    short = model(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    padded_ids = torch.cat([ids, torch.zeros(3, 6, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 6, dtype=mask.dtype)], dim=1)
    padded = model(input_ids=padded_ids, attention_mask=padded_mask, start_positions=starts, end_positions=ends)
    torch.testing.assert_close(padded.start_logits[:, :10], short.start_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.loss, short.loss, rtol=1e-5, atol=1e-6)
    unmasked = span_cross_entropy(padded.start_logits, padded.end_logits, starts, ends)
    assert unmasked > padded.loss  # the padding positions took probability mass
    # The mask never hides a label: a padded row's loss is over its real positions only.
    row = span_cross_entropy(padded.start_logits[1:2], padded.end_logits[1:2], starts[1:2], ends[1:2], padded_mask[1:2])
    expected = (
        torch.nn.functional.cross_entropy(short.start_logits[1:2, :7], starts[1:2])
        + torch.nn.functional.cross_entropy(short.end_logits[1:2, :7], ends[1:2])
    ) / 2
    torch.testing.assert_close(row, expected, rtol=1e-4, atol=1e-5)
