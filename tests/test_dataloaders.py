"""Batching: dynamic padding, (seed, epoch)-determined samplers, length grouping, the loaders."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from kqa.dataloaders import (
    EpochSeededRandomSampler,
    LengthGroupedSampler,
    QACollator,
    feature_lengths,
    make_eval_dataloader,
    make_train_dataloader,
    sort_by_length,
)
from kqa.features import FeatureConfig, prepare_train_features
from kqa.testing import KOREAN_EXAMPLES, reset_accelerate_state

PAD = 7


def _feature(length: int, tag: int, *, token_types: bool = True) -> dict:
    """A feature whose ids are all non-pad, with `tag` as its labels (to trace it through batching)."""
    feature = {
        "input_ids": [100 + tag] * length,
        "attention_mask": [1] * length,
        "start_positions": tag,
        "end_positions": tag + 1,
        "example_id": f"ex-{tag}",
        "offset_mapping": [[0, 1]] * length,
    }
    if token_types:
        feature["token_type_ids"] = [0] * (length // 2) + [1] * (length - length // 2)
    return feature


def _features_dataset(lengths) -> datasets.Dataset:
    return datasets.Dataset.from_list([_feature(int(n), i) for i, n in enumerate(lengths)])


def _padding(batches_of_lengths) -> int:
    return sum(max(b) * len(b) - sum(b) for b in batches_of_lengths)


# ---- collator ------------------------------------------------------------------------------------------


def test_collator_pads_to_the_longest_feature():
    features = [_feature(5, 0), _feature(9, 1), _feature(3, 2)]
    batch = QACollator(pad_token_id=PAD)(features)

    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].shape == (3, 9)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert batch["input_ids"][row, n:].tolist() == [PAD] * (9 - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (9 - n)
        assert batch["token_type_ids"][row].tolist() == f["token_type_ids"] + [0] * (9 - n)
    assert batch["start_positions"].tolist() == [0, 1, 2]
    assert batch["end_positions"].tolist() == [1, 2, 3]


def test_collator_rounds_up_to_a_multiple_of_8():
    collator = QACollator(pad_token_id=PAD, pad_to_multiple_of=8)
    assert collator([_feature(9, 0), _feature(3, 1)])["input_ids"].shape == (2, 16)
    assert collator([_feature(16, 0)])["input_ids"].shape == (1, 16)  # already a multiple
    batch = collator([_feature(1, 0)])
    assert batch["attention_mask"].tolist() == [[1] + [0] * 7]


def test_collator_without_labels_or_token_types_returns_only_what_exists():
    features = [
        {k: v for k, v in _feature(4, i, token_types=False).items() if not k.endswith("positions")} for i in range(2)
    ]
    batch = QACollator(pad_token_id=0)(features)
    assert set(batch) == {"input_ids", "attention_mask"}


def test_collator_rejects_ragged_columns_and_bad_settings():
    broken = _feature(4, 0)
    broken["attention_mask"] = [1, 1]
    with pytest.raises(ValueError, match="attention_mask"):
        QACollator(pad_token_id=0)([broken])
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        QACollator(pad_token_id=0, pad_to_multiple_of=0)


def test_collator_from_tokenizer_uses_its_pad_id(tiny_tokenizer):
    collator = QACollator.from_tokenizer(tiny_tokenizer, pad_to_multiple_of=8)
    assert collator.pad_token_id == tiny_tokenizer.pad_token_id and collator.pad_to_multiple_of == 8


# ---- samplers ------------------------------------------------------------------------------------------


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    def order(seed, epoch):
        sampler = EpochSeededRandomSampler(100, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 0) == order(3, 0)
    assert order(3, 1) == order(3, 1)
    assert order(3, 0) != order(3, 1)
    assert order(3, 0) != order(4, 0)
    assert sorted(order(3, 5)) == list(range(100))
    assert order(3, 0) != list(range(100))
    # Global RNG state has no influence.
    torch.manual_seed(0)
    np.random.seed(0)
    first = order(3, 2)
    torch.manual_seed(1)
    np.random.seed(1)
    assert order(3, 2) == first


def test_length_grouped_sampler_is_deterministic_and_complete():
    lengths = np.random.default_rng(0).integers(10, 384, size=500)

    def order(seed, epoch):
        sampler = LengthGroupedSampler(lengths, batch_size=8, seed=seed, mega_batch_mult=4)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert sorted(order(1, 3)) == list(range(500))
    assert len(LengthGroupedSampler(lengths, 8, seed=1)) == 500


def test_length_grouping_reduces_padding_and_puts_the_longest_batch_first():
    rng = np.random.default_rng(42)
    # Korean QA windows: many short single-window contexts, some full 384-token windows.
    lengths = np.concatenate([rng.integers(40, 200, size=700), np.full(150, 384), rng.integers(200, 384, 150)])
    batch_size = 16

    def batches(order):
        return [[int(lengths[i]) for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]

    random_order = list(EpochSeededRandomSampler(len(lengths), seed=0))
    grouped_order = list(LengthGroupedSampler(lengths, batch_size, seed=0))
    random_padding, grouped_padding = _padding(batches(random_order)), _padding(batches(grouped_order))

    assert grouped_padding < 0.25 * random_padding, (grouped_padding, random_padding)
    assert max(batches(grouped_order)[0]) == lengths.max()


# ---- loaders ------------------------------------------------------------------------------------------


def _collect(loader) -> list[int]:
    return [tag for batch in loader for tag in batch["start_positions"].tolist()]


@pytest.mark.parametrize("group_by_length", [False, True])
def test_train_loader_yields_every_feature_once_in_a_seeded_order(group_by_length):
    lengths = np.random.default_rng(1).integers(3, 40, size=53)
    features = _features_dataset(lengths)
    collator = QACollator(pad_token_id=PAD)
    loader = make_train_dataloader(features, collator, batch_size=8, seed=5, group_by_length=group_by_length)

    loader.set_epoch(0)
    epoch0 = _collect(loader)
    assert sorted(epoch0) == list(range(53))
    assert epoch0 != list(range(53))
    assert _collect(loader) == epoch0  # same epoch, same order
    loader.set_epoch(1)
    assert _collect(loader) != epoch0

    rebuilt = make_train_dataloader(features, collator, batch_size=8, seed=5, group_by_length=group_by_length)
    rebuilt.set_epoch(1)
    loader.set_epoch(1)
    assert _collect(rebuilt) == _collect(loader)  # a resumed run sees the same order

    for batch in loader:
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
        # each row's ids come from the feature its label names
        for row, tag in enumerate(batch["start_positions"].tolist()):
            n = int(lengths[tag])
            assert batch["input_ids"][row, :n].tolist() == [100 + tag] * n
            assert int(batch["attention_mask"][row].sum()) == n


def test_train_loader_drop_last_and_workers():
    features = _features_dataset([5] * 21)
    collator = QACollator(pad_token_id=PAD)
    dropped = make_train_dataloader(features, collator, batch_size=8, seed=0, drop_last=True)
    assert [len(b["input_ids"]) for b in dropped] == [8, 8]
    in_process = make_train_dataloader(features, collator, batch_size=4, seed=9)
    with_workers = make_train_dataloader(features, collator, batch_size=4, seed=9, num_workers=2)
    assert _collect(with_workers) == _collect(in_process)


def test_train_loader_requires_labels():
    features = _features_dataset([4, 5]).remove_columns(["start_positions", "end_positions"])
    with pytest.raises(ValueError, match="label"):
        make_train_dataloader(features, QACollator(pad_token_id=0), batch_size=2, seed=0)


def test_eval_loader_keeps_dataset_order_and_passes_labels_when_present():
    lengths = [7, 3, 12, 5, 9]
    features = _features_dataset(lengths)
    collator = QACollator(pad_token_id=PAD)
    batches = list(make_eval_dataloader(features, collator, batch_size=2))
    assert [b["input_ids"].shape[1] for b in batches] == [7, 12, 9]  # padded per batch, not globally
    assert _collect(batches) == list(range(5))

    unlabelled = features.remove_columns(["start_positions", "end_positions"])
    batch = next(iter(make_eval_dataloader(unlabelled, collator, batch_size=5)))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert [row[0] for row in batch["input_ids"].tolist()] == [100 + i for i in range(5)]


def test_feature_lengths_follow_selection():
    features = _features_dataset([4, 9, 2, 7])
    assert feature_lengths(features) == [4, 9, 2, 7]
    assert feature_lengths(features.select([3, 0])) == [7, 4]


def test_loader_over_real_features(tiny_tokenizer):
    examples = datasets.Dataset.from_list(KOREAN_EXAMPLES)
    config = FeatureConfig(max_seq_length=48, doc_stride=16, max_query_length=8)
    features, _ = prepare_train_features(examples, tiny_tokenizer, config)
    collator = QACollator.from_tokenizer(tiny_tokenizer, pad_to_multiple_of=8)
    loader = make_train_dataloader(features, collator, batch_size=4, seed=0, group_by_length=True)
    seen = 0
    for batch in loader:
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
        assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] <= 48
        lengths = batch["attention_mask"].sum(dim=1)
        assert bool((batch["start_positions"] < lengths).all()) and bool((batch["end_positions"] < lengths).all())
        seen += len(batch["input_ids"])
    assert seen == len(features)


def test_accelerate_prepared_loader_follows_set_epoch_and_resumes_mid_epoch():
    from accelerate import Accelerator

    features = _features_dataset(np.random.default_rng(2).integers(3, 30, size=40))
    collator = QACollator(pad_token_id=PAD)
    try:
        accelerator = Accelerator(cpu=True)
        for group_by_length in (False, True):
            plain = make_train_dataloader(features, collator, batch_size=4, seed=11, group_by_length=group_by_length)
            prepared = accelerator.prepare(
                make_train_dataloader(features, collator, batch_size=4, seed=11, group_by_length=group_by_length)
            )
            for epoch in (0, 3):
                plain.set_epoch(epoch)
                prepared.set_epoch(epoch)
                expected = _collect(plain)
                assert _collect(prepared) == expected
                # Resuming after 3 batches replays the rest of the same order. (A prepared loader
                # counts its epochs itself after each pass, so a resume sets the epoch first.)
                prepared.set_epoch(epoch)
                assert _collect(accelerator.skip_first_batches(prepared, 3)) == expected[12:]
            prepared.set_epoch(0)
            first = _collect(prepared)
            prepared.set_epoch(1)
            assert _collect(prepared) != first
    finally:
        reset_accelerate_state()


def test_sort_by_length_orders_longest_first_keeps_ties_and_every_row():
    lengths = [5, 9, 2, 9, 7, 2, 5]
    features = _features_dataset(lengths)
    ordered = sort_by_length(features)
    assert feature_lengths(ordered) == [9, 9, 7, 5, 5, 2, 2]
    assert ordered["example_id"] == ["ex-1", "ex-3", "ex-4", "ex-0", "ex-6", "ex-2", "ex-5"]  # ties: row order
    assert sorted(ordered["example_id"]) == sorted(features["example_id"])
    # Batches of neighbours in that order pad less than batches in row order.
    by_rows = _padding([lengths[i : i + 2] for i in range(0, 7, 2)])
    sorted_lengths = feature_lengths(ordered)
    assert _padding([sorted_lengths[i : i + 2] for i in range(0, 7, 2)]) < by_rows
