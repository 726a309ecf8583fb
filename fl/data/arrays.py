"""Turning decoded arrays into normalised :class:`ArrayDataset` pairs.

Every loader standardises with statistics of its *training* split only (the test
split reuses them): ``(x - mean) / std``, one mean and std per channel
(``per_channel=True``, axis 1 of an (n, c, h, w) array) or one over all values.
Scaling 8-bit pixels to [0, 1] first would give the same result, so it is skipped.
"""

from __future__ import annotations

import numpy as np
import torch

from fl.data.dataset import ArrayDataset


def train_statistics(x: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``x`` (n, c, ...) per channel, shape (c,), or overall, shape ().

    8-bit arrays are summarised exactly and fast through a histogram of their 256
    values; other arrays in float64.
    """
    groups = [x[:, c] for c in range(x.shape[1])] if per_channel else [x]
    means, stds = [], []
    for group in groups:
        if group.dtype == np.uint8:
            counts = np.bincount(group.ravel(), minlength=256).astype(np.float64)
            values = np.arange(256, dtype=np.float64)
            mean = (counts @ values) / counts.sum()
            std = np.sqrt((counts @ (values - mean) ** 2) / counts.sum())
        else:
            mean = group.mean(dtype=np.float64)
            std = np.sqrt(np.mean((group.astype(np.float64) - mean) ** 2))
        means.append(mean)
        stds.append(std)
    if per_channel:
        return np.array(means), np.array(stds)
    return np.asarray(means[0]), np.asarray(stds[0])


def standardised_pair(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    *,
    per_channel: bool = False,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) ArrayDatasets with float32 x standardised by the train statistics.

    ``train_x``/``test_x``: arrays of shape (n, *feature_shape), any numeric dtype.
    Labels become int64. Training inputs that are not finite, or of std 0 (overall, or in a
    channel), are refused.
    """
    mean, std = train_statistics(np.asarray(train_x), per_channel)
    if not np.all(np.isfinite(std)):
        raise ValueError(f"{name}: the training inputs hold NaN or infinite values; allowed is finite inputs")
    if not np.all(std > 0):
        where = f"channel {int(np.flatnonzero(std <= 0)[0])} of " if per_channel else ""
        raise ValueError(
            f"{name}: {where}the training inputs are constant (std 0), so they cannot be standardised; "
            "allowed is a training split whose values vary (is the file truncated or blank?)"
        )
    shape = (1, -1) + (1,) * (np.ndim(train_x) - 2) if per_channel else ()
    mean32 = mean.astype(np.float32).reshape(shape)
    std32 = std.astype(np.float32).reshape(shape)
    arrays = []
    for raw in (train_x, test_x):
        array = np.array(raw, dtype=np.float32)  # a fresh copy, standardised in place
        array -= mean32
        array /= std32
        arrays.append(array)
    train_f, test_f = arrays
    return tuple(
        ArrayDataset(name, torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64)), num_classes)
        for x, y in ((train_f, train_y), (test_f, test_y))
    )
