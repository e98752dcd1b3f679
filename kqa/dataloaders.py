"""Batches for the model: dynamic padding and samplers whose order depends only on (seed, epoch).

Features are stored unpadded; `QACollator` pads each batch to its own longest feature, which on
Korean data (most contexts far shorter than a 384-token window) saves much of the compute that padding
every window to `max_seq_length` would waste. `LengthGroupedSampler` saves more by putting features of
similar length in the same batch.

Both samplers derive their order from `(seed, epoch)` alone, never from a global RNG, so a run resumed
from a checkpoint at epoch `e` replays exactly the order of the interrupted run (call `set_epoch(e)`
first; `accelerate`'s prepared loaders forward `set_epoch` to the sampler).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

MODEL_INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_COLUMNS = ("start_positions", "end_positions")

# Under mixed precision, batches are padded to a multiple of this many tokens (tensor-core friendly shapes).
MIXED_PRECISION_PAD_MULTIPLE = 8


def pad_multiple_for(mixed_precision: str) -> int | None:
    """The `pad_to_multiple_of` for Accelerate's `mixed_precision` ("no", "fp16", "bf16", "fp8")."""
    return MIXED_PRECISION_PAD_MULTIPLE if mixed_precision != "no" else None


@dataclass
class QACollator:
    """Pad a list of features to the longest one (rounded up to `pad_to_multiple_of`).

    `input_ids` are padded with `pad_token_id`, `attention_mask` and `token_type_ids` with 0 (on the
    right); `start_positions`/`end_positions` are stacked when present. Other columns (`example_id`,
    `offset_mapping`) are not model inputs and are dropped. Returns `dict[str, torch.LongTensor]`.
    """

    pad_token_id: int
    pad_to_multiple_of: Optional[int] = None

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of}")

    @classmethod
    def from_tokenizer(cls, tokenizer, pad_to_multiple_of: Optional[int] = None) -> QACollator:
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token first")
        return cls(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)

    def padded_length(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        if multiple is None:
            return longest
        return -(-longest // multiple) * multiple

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        if "input_ids" not in features[0]:
            raise KeyError(f"features need an 'input_ids' column; got {sorted(features[0])}")
        lengths = [len(f["input_ids"]) for f in features]
        width = self.padded_length(max(lengths))
        batch: dict[str, torch.Tensor] = {}
        for name in MODEL_INPUT_COLUMNS:
            if name not in features[0]:
                continue
            fill = self.pad_token_id if name == "input_ids" else 0
            padded = np.full((len(features), width), fill, dtype=np.int64)
            for row, (feature, length) in enumerate(zip(features, lengths)):
                values = feature[name]
                if len(values) != length:
                    raise ValueError(f"feature {row}: {name} has {len(values)} entries but input_ids has {length}")
                padded[row, :length] = np.asarray(values, dtype=np.int64)
            batch[name] = torch.from_numpy(padded)
        for name in LABEL_COLUMNS:
            if name in features[0]:
                labels = [int(f[name]) for f in features]
                # Checked here, on the host, so that the loss needs no device-to-host sync to check it.
                if min(labels) < 0:
                    row = labels.index(min(labels))
                    raise ValueError(
                        f"feature {row}: {name} is {labels[row]}; span labels are token indices >= 0 "
                        "(the CLS index marks a window without the answer)"
                    )
                batch[name] = torch.tensor(labels, dtype=torch.long)
        return batch


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    # A SeedSequence over both numbers: every (seed, epoch) pair gets an independent stream.
    return np.random.default_rng([int(seed), int(epoch)])


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation of `range(num_samples)` determined by `(seed, epoch)` only."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must not be negative, got {num_samples}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(_epoch_rng(self.seed, self.epoch).permutation(self.num_samples).tolist())

    def __len__(self) -> int:
        return self.num_samples


class LengthGroupedSampler(Sampler[int]):
    """Random order, but features of similar length share a batch.

    Shuffle by `(seed, epoch)`, cut into mega-batches of `mega_batch_mult * batch_size`, sort each
    mega-batch by length (longest first) and move the longest feature overall into the first batch,
    so an out-of-memory batch shows at the first step rather than hours in. Mega-batches hold whole
    batches, so the DataLoader's batches fall exactly on the sorted groups.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batch_mult: int = 50) -> None:
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(f"batch_size ({batch_size}) and mega_batch_mult ({mega_batch_mult}) must be positive")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.mega_batch_size = batch_size * mega_batch_mult
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = _epoch_rng(self.seed, self.epoch).permutation(len(self.lengths))
        groups = []
        for lo in range(0, len(order), self.mega_batch_size):
            group = order[lo : lo + self.mega_batch_size]
            # Stable sort on the negated length: ties keep their random order.
            groups.append(group[np.argsort(-self.lengths[group], kind="stable")])
        if not groups:
            return iter([])
        indices = np.concatenate(groups)
        longest = int(np.argmax(self.lengths[indices]))
        indices[0], indices[longest] = indices[longest], indices[0]
        return iter(indices.tolist())

    def __len__(self) -> int:
        return len(self.lengths)


class QADataLoader(DataLoader):
    """A DataLoader with `set_epoch`, forwarded to its sampler (as `accelerate`'s prepared loaders do)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's RNGs in a DataLoader worker from the seed torch gave that worker."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _batch_columns(features) -> list[str]:
    """Model inputs plus labels, in the order they exist in `features`."""
    wanted = MODEL_INPUT_COLUMNS + LABEL_COLUMNS
    if "input_ids" not in features.column_names:
        raise ValueError(f"features need an 'input_ids' column; got {features.column_names}")
    return [c for c in features.column_names if c in wanted]


def feature_lengths(features) -> list[int]:
    """Token count of every feature, read from the Arrow list offsets (no row decoding)."""
    import pyarrow.compute as pc

    column = features.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(column).to_pylist()


def sort_by_length(features):
    """The features, longest first (ties keep their order): evaluation batches of similar lengths pad
    little. Decoding groups windows by `example_id`, so evaluation does not depend on their order."""
    lengths = np.asarray(feature_lengths(features), dtype=np.int64)
    return features.select(np.argsort(-lengths, kind="stable"))


def make_train_dataloader(
    features,
    collator: QACollator,
    batch_size: int,
    *,
    seed: int,
    group_by_length: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
) -> QADataLoader:
    """Shuffled batches of train features; the order depends only on `seed` and the epoch set with
    `set_epoch`. With `group_by_length`, batches hold features of similar length (less padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    columns = _batch_columns(features)
    missing = [c for c in LABEL_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"train features lack the label column(s) {missing}; build them with prepare_train_features")
    dataset = features.select_columns(columns)
    if group_by_length:
        sampler: Sampler[int] = LengthGroupedSampler(feature_lengths(dataset), batch_size, seed)
    else:
        sampler = EpochSeededRandomSampler(len(dataset), seed)
    return QADataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        drop_last=drop_last,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def make_eval_dataloader(features, collator: QACollator, batch_size: int, num_workers: int = 0) -> QADataLoader:
    """Batches of features in dataset order (logits line up with the features' rows). Labels are
    passed through when the features carry them (for an evaluation loss)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dataset = features.select_columns(_batch_columns(features))
    return QADataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collator,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers > 0 else None,
    )
