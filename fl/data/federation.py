"""A label-skewed federation with a server-side validation set, in one call.

What experiments on incentivised participation (IncFL, its benchmark and tests) start
from: a pool of training samples, a stratified validation set held out of it for the
server, the rest split among clients by Dirichlet label skew, and each client's label
distribution p_k (the weights that turn per-class losses into client k's loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl.algorithms.strategy import child_seed
from fl.checks import check_integer
from fl.data import partition
from fl.data.dataset import ArrayDataset, Subset


_POOL, _HOLDOUT, _SPLIT = range(3)  # the seed's streams


@dataclass(frozen=True)
class Federation:
    """clients: one :class:`Subset` per client; label_distributions: (N, K), row k the
    share of each class in client k's data (rows sum to 1); validation: the held-out set."""

    clients: list[Subset]
    label_distributions: np.ndarray
    validation: ArrayDataset


def dirichlet_federation(
    train: ArrayDataset,
    clients: int,
    alpha: float,
    seed: int,
    pool: int | None = None,
    validation_fraction: float = 0.2,
    min_size: int = 5,
) -> Federation:
    """``pool`` samples of ``train`` drawn at random (all of them when None), a stratified
    ``validation_fraction`` of them held out (:func:`partition.holdout`) with a sample of
    every class in the pool (IncFL's per-class validation losses need each; ValueError
    naming ``pool`` and ``validation_fraction`` otherwise), the rest split among
    ``clients`` clients by Dirichlet(``alpha``) label skew, each holding at least
    ``min_size`` >= 1 samples (:func:`partition.dirichlet`; ValueError when no draw can,
    naming ``clients`` when the rest has fewer samples than clients).
    The pool, the held-out set and the split draw from three streams of ``seed``: give
    it a seed no other purpose draws from (e.g. ``child_seed(seed, key)``)."""
    labels = train.labels()
    pool = len(labels) if pool is None else pool
    check_integer("pool", pool)
    check_integer("clients", clients)
    check_integer("min_size", min_size)
    if pool > len(labels):
        raise ValueError(f"pool={pool!r}: allowed is 1 to {len(labels)}, the training set's size")
    indices = np.random.default_rng(child_seed(seed, _POOL)).permutation(len(labels))[:pool]
    try:
        kept, held = partition.holdout(labels[indices], validation_fraction, child_seed(seed, _HOLDOUT),
                                       key="validation_fraction", every_class=True)
    except ValueError as error:
        raise ValueError(f"pool={pool!r} with {error}") from None
    kept, held = indices[kept], indices[held]
    partition.check_min_size(min_size, clients, len(kept), key="clients")
    parts = partition.dirichlet(labels[kept], clients, alpha, child_seed(seed, _SPLIT), min_size=min_size)
    counts = partition.label_histograms(labels[kept], parts, train.num_classes)
    validation = ArrayDataset(f"{train.name}-validation", train.x[held], train.y[held], train.num_classes)
    return Federation([train.subset(kept[p]) for p in parts], counts / counts.sum(axis=1, keepdims=True), validation)
