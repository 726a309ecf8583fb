"""Partitions of a labelled pool among clients.

Every partitioner is a pure function of ``(labels, parameters, seed)``. It returns a
:class:`Partition`: a list with one int64 array per client of positions into
``labels``. The arrays are pairwise disjoint and each is in a random order, so the
first ``m`` entries of a part are a uniform random subsample of that part (a client
that contributes ``m`` of its samples contributes a prefix).

Label skew (each class split among the clients in Dirichlet(alpha 1_N) proportions)
follows Yurochkin et al. (2019), "Bayesian nonparametric federated learning of neural
networks", ICML 2019. Hsu et al. (2019), "Measuring the effects of non-identical data
distribution for federated visual classification", arXiv:1909.06335, draw per client
instead, a class mix q ~ Dirichlet(alpha p): ``by_counts`` fills such mixes
(``fl.oracle.TrainingOracle(alpha=...)`` draws them).
The pathological shards split follows McMahan et al. (2017), "Communication-efficient
learning of deep networks from decentralized data".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fl.checks import (as_floats, check_distributions, check_fraction, check_indices, check_integer,
                       check_positive, check_seed)

_MAX_TRIES = 1000  # redraws allowed for dirichlet() to meet min_size
# The most alpha * K a Dirichlet(alpha 1_K) draw may have: it normalises K gamma draws of mean alpha,
# and numpy returns zeros once their sum passes the largest float (1.8e308); half of it leaves room
# for their spread.
LARGEST_CONCENTRATION_SUM = np.finfo(np.float64).max / 2


class Partition(list):
    """One int64 index array per client, plus ``notes``: departures from what was asked
    (for instance a class that ran out and was filled from others); empty when none."""

    def __init__(self, parts: Sequence[np.ndarray], notes: Sequence[str] = ()):
        super().__init__(np.asarray(p, dtype=np.int64) for p in parts)
        self.notes = list(notes)


def label_histograms(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(N, K) int64 counts: entry (i, k) is the number of samples of class k in part i;
    ValueError unless every part holds positions into ``labels``, in [0, len(labels))."""
    labels = _check_labels(labels)
    check_integer("num_classes", num_classes)
    if labels.max() >= num_classes:
        raise ValueError(f"num_classes={num_classes!r}: allowed is more than the largest label, {labels.max()}")
    if isinstance(parts, (str, bytes)) or not isinstance(parts, (Sequence, np.ndarray)) or not len(parts):
        raise ValueError(f"parts={parts!r}: allowed is a non-empty list of index arrays, one per part")
    parts = [check_indices(f"parts[{i}]", p, len(labels)) for i, p in enumerate(parts)]
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def iid(labels: np.ndarray, num_clients: int, seed: int) -> Partition:
    """Uniform random split of all samples into ``num_clients`` parts whose sizes differ by at most one
    (ValueError for more clients than samples: some would get none)."""
    labels = _check_labels(labels)
    check_integer("num_clients", num_clients)
    if num_clients > len(labels):
        raise ValueError(f"num_clients={num_clients!r}: allowed is at most {len(labels)}, the number of samples "
                         "(every client gets at least one)")
    rng = np.random.default_rng(check_seed(seed))
    return Partition(np.array_split(rng.permutation(len(labels)), num_clients))


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 1) -> Partition:
    """Label skew: for each class k, split its samples among clients in proportions
    q_k ~ Dirichlet(alpha * 1_N). Small ``alpha`` concentrates each class on few clients
    (strong skew); large ``alpha`` tends to the IID split. All samples are assigned.

    The draw is repeated until every client holds at least ``min_size`` samples
    (ValueError after 1000 tries: raise ``alpha`` or lower ``min_size``).
    """
    labels = _check_labels(labels)
    check_integer("num_clients", num_clients)
    check_concentration("alpha", alpha, num_clients, "clients")
    check_min_size(min_size, num_clients, len(labels))
    rng = np.random.default_rng(check_seed(seed))
    members = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    # equal shares (alpha N beyond 1e32) tie in every class: each class's left-over samples go on from the
    # client after the last one the classes before it gave one to (all went to the first clients, short the rest)
    starts = np.cumsum([0] + [len(idx) for idx in members[:-1]]) % num_clients
    for _ in range(_MAX_TRIES):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx, dealt in zip(members, starts):
            shares = _largest_remainder(len(idx), rng.dirichlet(np.full(num_clients, alpha)), dealt)
            for i, chunk in enumerate(np.split(rng.permutation(idx), np.cumsum(shares)[:-1])):
                chunks[i].append(chunk)
        parts = [np.concatenate(c) for c in chunks]
        if min(len(p) for p in parts) >= min_size:
            return Partition(rng.permutation(p) for p in parts)
    raise ValueError(
        f"min_size={min_size!r}: allowed is a size that a Dirichlet(alpha={alpha!r}) split reaches; "
        f"none of {_MAX_TRIES} draws gave every client that many samples (raise alpha or lower min_size)"
    )


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int) -> Partition:
    """Pathological non-IID split of McMahan et al. (2017): sort the samples by label
    (ties in random order), cut them into ``num_clients * shards_per_client`` shards of
    (nearly) equal size and give each client ``shards_per_client`` random shards, so a
    client sees at most about ``shards_per_client`` classes."""
    labels = _check_labels(labels)
    check_integer("num_clients", num_clients)
    check_integer("shards_per_client", shards_per_client)
    num_shards = num_clients * shards_per_client
    if num_clients > len(labels):
        raise ValueError(f"num_clients={num_clients!r}: allowed is at most {len(labels)}, the number of samples "
                         "(every client gets at least one shard of one sample)")
    if num_shards > len(labels):
        raise ValueError(
            f"shards_per_client={shards_per_client!r}: allowed is at most "
            f"{len(labels) // num_clients} ({len(labels)} samples for {num_clients} clients)"
        )
    rng = np.random.default_rng(check_seed(seed))
    order = np.lexsort((rng.random(len(labels)), labels))
    pieces = np.array_split(order, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return Partition(rng.permutation(np.concatenate([pieces[s] for s in row])) for row in owners)


def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    *,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    alpha: float = 1.0,
    min_size: int = 1,
) -> Partition:
    """Quantity skew with IID labels: client sizes are ``min_size`` plus a share of the
    remaining samples proportional to w_i, where w ~ Dirichlet(alpha * 1_N)
    (``distribution="dirichlet"``) or w_i ~ LogNormal(0, sigma^2) i.i.d.
    (``distribution="lognormal"``). Samples are assigned uniformly at random; all are used."""
    labels = _check_labels(labels)
    check_integer("num_clients", num_clients)
    check_min_size(min_size, num_clients, len(labels))
    rng = np.random.default_rng(check_seed(seed))
    if distribution == "lognormal":
        check_positive("sigma", sigma)
        log_weights = rng.normal(0.0, sigma, num_clients)  # rng.lognormal's draws, kept in log space
        weights = np.exp(log_weights - log_weights.max())  # so that no sigma overflows them
    elif distribution == "dirichlet":
        weights = rng.dirichlet(np.full(num_clients, check_concentration("alpha", alpha, num_clients, "clients")))
    else:
        raise ValueError(f"distribution={distribution!r}: allowed is 'lognormal' or 'dirichlet'")
    sizes = min_size + _largest_remainder(len(labels) - num_clients * min_size, weights)
    return Partition(np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1]))


def by_counts(
    labels: np.ndarray,
    counts: Sequence[int],
    label_distributions: np.ndarray | None = None,
    seed: int = 0,
) -> Partition:
    """Client i receives exactly ``counts[i]`` samples, disjoint across clients, with
    class counts proportional to row i of ``label_distributions`` ((N, K), rows summing
    to one; ``None``: the pool's own label frequencies for everyone).

    Class counts are the largest-remainder rounding of counts[i] * p_i. Where the
    clients together ask for more samples of a class than the pool holds, the class is
    shared in proportion to what each asked for, and each client's shortfall is filled
    uniformly at random from the samples no client asked for; every such fill is
    reported in ``Partition.notes``. Samples not handed out stay unassigned.
    """
    labels = _check_labels(labels)
    allowed = "a non-empty 1-D sequence of non-negative integers"
    try:
        counts = np.asarray(counts)
    except ValueError:  # ragged: [[1], [2, 3]]
        raise ValueError(f"counts={counts!r}: allowed is {allowed}") from None
    integral = np.issubdtype(counts.dtype, np.number) and np.all(counts >= 0) and not np.any(counts % 1)
    if counts.ndim != 1 or len(counts) == 0 or not integral:
        raise ValueError(f"counts={counts.tolist()!r}: allowed is {allowed}")
    counts = counts.astype(np.int64)
    if counts.sum() > len(labels):
        raise ValueError(f"counts={counts.tolist()!r}: allowed is a total of at most {len(labels)} (the pool size)")
    if label_distributions is None:
        supply = np.bincount(labels)
        dist = np.tile(supply / len(labels), (len(counts), 1))
    else:
        dist = _check_distributions(label_distributions, len(counts), int(labels.max()) + 1)
        supply = np.bincount(labels, minlength=dist.shape[1])
    demand = np.stack([_largest_remainder(n, p) for n, p in zip(counts, dist)])
    granted = demand.copy()
    for k in np.flatnonzero(demand.sum(axis=0) > supply):
        granted[:, k] = _largest_remainder(int(supply[k]), demand[:, k])

    rng = np.random.default_rng(check_seed(seed))
    pools = [rng.permutation(np.flatnonzero(labels == k)) for k in range(demand.shape[1])]
    taken = np.zeros(demand.shape[1], dtype=np.int64)
    parts: list[list[np.ndarray]] = []
    for row in granted:
        parts.append([pools[k][taken[k] : taken[k] + row[k]] for k in range(len(row))])
        taken += row
    leftover = rng.permutation(np.concatenate([pool[t:] for pool, t in zip(pools, taken)]))
    notes, used = [], 0
    for i, (want, got) in enumerate(zip(demand, granted)):
        short = int(counts[i] - got.sum())
        if short:
            parts[i].append(leftover[used : used + short])
            used += short
            missing = ", ".join(f"class {k}: {want[k] - got[k]}" for k in np.flatnonzero(want > got))
            notes.append(f"client {i}: pool ran out of ({missing}); filled {short} samples from other classes")
    return Partition((rng.permutation(np.concatenate(p)) for p in parts), notes)


def holdout(labels: np.ndarray, fraction: float, seed: int, *, key: str = "fraction",
            every_class: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split into ``(kept, held)``: ``held`` has round(fraction * n) samples
    with class counts proportional to the pool's (:func:`holdout_sizes`, which refuses a
    split that holds out or keeps nothing, naming ``key``), e.g. a public set for
    distillation or a validation set. Both arrays are in random order."""
    labels = _check_labels(labels)
    sizes = holdout_sizes(labels, fraction, key=key, every_class=every_class)
    rng = np.random.default_rng(check_seed(seed))
    members = [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    held = np.concatenate([m[:s] for m, s in zip(members, sizes)])
    kept = np.concatenate([m[s:] for m, s in zip(members, sizes)])
    return rng.permutation(kept), rng.permutation(held)


def holdout_sizes(labels: np.ndarray, fraction: float, *, key: str = "fraction",
                  every_class: bool = False) -> np.ndarray:
    """Per class present in ``labels`` (ascending), the samples :func:`holdout` holds out:
    :func:`holdout_size` in all, shared in proportion to the class counts (largest
    remainder). It depends on the labels and the fraction alone, not on a seed, so a
    caller can check a split before drawing it. ValueError naming ``key`` (the caller's
    name for ``fraction``, e.g. "validation_fraction") unless the split holds out at
    least one sample and keeps at least one, and, with ``every_class``, holds out a
    sample of every class (a validation set that judges models per class needs each)."""
    labels = _check_labels(labels)
    check_fraction(key, fraction, positive=True)
    classes, counts = np.unique(labels, return_counts=True)
    total = holdout_size(len(labels), fraction)
    if not 0 < total < len(labels):
        raise ValueError(f"{key}={fraction!r}: allowed is a share that holds out at least one and keeps at least "
                         f"one of the {len(labels)} samples (it holds out {total})")
    sizes = _largest_remainder(total, counts)
    if every_class and not sizes.all():
        raise ValueError(f"{key}={fraction!r}: allowed is a share that holds out a sample of every class; its "
                         f"{total} samples miss the classes {classes[sizes == 0].tolist()}")
    return sizes


def holdout_size(n: int, fraction: float) -> int:
    """The samples :func:`holdout` holds out of ``n``: round(fraction * n)."""
    return int(round(fraction * n))


def check_concentration(key: str, alpha, count: int, what: str) -> float:
    """``alpha`` as a float; ValueError unless it is a finite number > 0 whose
    Dirichlet(alpha 1_count) draw, over ``count`` ``what`` (e.g. "clients"), stays finite:
    alpha * count at most :data:`LARGEST_CONCENTRATION_SUM` (past it numpy's draw is all
    zeros, and a split of it gave one sample to several clients)."""
    alpha = check_positive(key, alpha)
    if alpha * count > LARGEST_CONCENTRATION_SUM:
        raise ValueError(f"{key}={alpha!r}: allowed is a number > 0 of at most {LARGEST_CONCENTRATION_SUM / count:.3g} "
                         f"for {count} {what} (alpha * {count} beyond {LARGEST_CONCENTRATION_SUM:.3g} overflows the "
                         "Dirichlet draw; an alpha of 1e6 already gives all but equal shares)")
    return alpha


def _largest_remainder(total: int, weights: np.ndarray, first: int = 0) -> np.ndarray:
    """Non-negative integers summing to ``total``, proportional to ``weights``
    (Hamilton's largest-remainder rounding; ties go to the lower index counted cyclically
    from ``first``: index first, first + 1, ..., then 0)."""
    weights = np.asarray(weights, dtype=np.float64)
    exact = total * weights / weights.sum()
    shares = np.floor(exact).astype(np.int64)
    extra = total - int(shares.sum())
    order = np.roll(np.arange(len(shares)), -first)
    shares[order[np.argsort((shares - exact)[order], kind="stable")[:extra]]] += 1
    return shares


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(
            f"labels (shape {labels.shape}, dtype {labels.dtype}): "
            "allowed is a non-empty 1-D array of non-negative integers"
        )
    return labels.astype(np.int64, copy=False)


def check_min_size(min_size: int, num_clients: int, num_samples: int, *, key: str = "num_clients") -> None:
    """ValueError unless ``num_samples`` samples give each of ``num_clients`` clients at least
    ``min_size`` >= 0 (min_size * num_clients <= num_samples). It names the client count
    (``key``: the caller's name for it) when even one sample each is too many, with its
    bound num_samples // min_size; else ``min_size``, with its bound num_samples // num_clients."""
    check_integer("min_size", min_size, least=0)
    if min_size * num_clients <= num_samples:
        return
    if num_clients > num_samples:
        raise ValueError(f"{key}={num_clients!r}: allowed is at most {num_samples // min_size} ({num_samples} "
                         f"samples, each client holding at least min_size={min_size})")
    raise ValueError(
        f"min_size={min_size!r}: allowed is at most {num_samples // num_clients} "
        f"({num_samples} samples for {num_clients} clients)"
    )


def _check_distributions(dist: np.ndarray, num_clients: int, num_classes: int) -> np.ndarray:
    """``dist`` as a float array, checked: (num_clients, K >= num_classes), rows of
    entries >= 0 summing to 1; ValueError naming the first bad row."""
    shape = f"({num_clients}, K) with K >= {num_classes} (one row per client, one column per class)"
    dist = as_floats("label_distributions", dist, f"numbers of shape {shape}")
    if dist.ndim != 2 or dist.shape[0] != num_clients or dist.shape[1] < num_classes:
        raise ValueError(f"label_distributions (shape {dist.shape}): allowed is shape {shape}")
    check_distributions("label_distributions", dist)
    return dist
