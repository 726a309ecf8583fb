import math
import re

import numpy as np
import pytest
import torch

from fl.algorithms import child_seed
from fl.data import partition
from fl.data.dataset import load_digits

LABELS = load_digits()[0].labels()  # 1438 digits, 10 classes


def balanced_labels(per_class=100, classes=10):
    return np.repeat(np.arange(classes), per_class)


def assert_disjoint(parts, n, covers):
    joined = np.concatenate(parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert len(np.unique(joined)) == len(joined)
    assert joined.min() >= 0 and joined.max() < n
    if covers:
        assert len(joined) == n


SPLITS = {
    "iid": lambda seed: partition.iid(LABELS, 10, seed),
    "dirichlet": lambda seed: partition.dirichlet(LABELS, 10, 0.5, seed, min_size=5),
    "shards": lambda seed: partition.shards(LABELS, 10, 2, seed),
    "quantity_lognormal": lambda seed: partition.quantity_skew(LABELS, 10, seed, sigma=1.0),
    "quantity_dirichlet": lambda seed: partition.quantity_skew(LABELS, 10, seed, distribution="dirichlet", alpha=1.0),
}


@pytest.mark.parametrize("name", SPLITS)
def test_partitions_cover_the_pool_disjointly_and_reproducibly(name):
    parts = SPLITS[name](0)
    assert len(parts) == 10
    assert_disjoint(parts, len(LABELS), covers=True)
    again, other = SPLITS[name](0), SPLITS[name](1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition.iid(LABELS, 7, 0)]
    assert max(sizes) - min(sizes) <= 1
    assert [len(p) for p in partition.iid(LABELS[:5], 5, 0)] == [1] * 5  # as many clients as samples


def test_label_histograms_counts_each_class():
    labels = np.array([0, 0, 1, 2, 2, 2])
    hist = partition.label_histograms(labels, [np.array([0, 2, 3]), np.array([1, 4, 5])], num_classes=4)
    np.testing.assert_array_equal(hist, [[1, 1, 1, 0], [1, 0, 2, 0]])


def test_dirichlet_skew_is_stronger_for_small_alpha():
    def mean_top_class_share(alpha):
        parts = partition.dirichlet(LABELS, 10, alpha, seed=0)
        hist = partition.label_histograms(LABELS, parts, 10)
        return np.mean(hist.max(axis=1) / hist.sum(axis=1))

    strong, weak = mean_top_class_share(0.1), mean_top_class_share(100.0)
    assert strong > 0.5 > 0.2 > weak


def test_dirichlet_shares_have_the_mean_and_variance_of_the_dirichlet_distribution():
    """A class split in q ~ Dirichlet(alpha 1_N) proportions: each client's share has mean
    1/N and variance (1/N)(1 - 1/N) / (N alpha + 1) = 0.2 x 0.8 / 3.5 = 0.0457 at N = 5,
    alpha = 0.5 (the counts round the shares by at most one sample of 1000)."""
    labels = np.zeros(1000, dtype=np.int64)
    shares = np.array([[len(part) / 1000 for part in partition.dirichlet(labels, 5, 0.5, seed, min_size=0)]
                       for seed in range(600)])
    assert shares.mean() == pytest.approx(0.2, abs=1e-12)  # every sample is handed out
    assert shares.var(axis=0).mean() == pytest.approx(0.2 * 0.8 / 3.5, rel=0.1)


def test_dirichlet_min_size_is_met_or_refused():
    parts = partition.dirichlet(LABELS, 20, 0.3, seed=3, min_size=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(ValueError, match="min_size=1000"):
        partition.dirichlet(LABELS, 10, 0.5, seed=0, min_size=1000)


def test_shards_give_each_client_at_most_its_number_of_classes():
    labels = balanced_labels()
    parts = partition.shards(labels, 50, 2, seed=0)
    assert_disjoint(parts, len(labels), covers=True)
    classes = (partition.label_histograms(labels, parts, 10) > 0).sum(axis=1)
    assert classes.max() <= 2 and classes.min() >= 1


def _classes_missed_by_a_uniform_prefix(labels, part, m):
    """Union bound on the chance that a uniform random m-subsample of ``part`` misses one
    of its classes: sum over its classes k of C(n - n_k, m) / C(n, m) (hypergeometric)."""
    n = len(part)
    return sum(math.comb(n - c, m) / math.comb(n, m) for c in np.bincount(labels[part]) if c)


@pytest.mark.parametrize("split, m", [(lambda labels: partition.dirichlet(labels, 5, 100.0, seed=0), 100),
                                      (lambda labels: partition.shards(labels, 5, 4, seed=0), 50)],
                         ids=["dirichlet", "shards"])
def test_a_parts_prefix_is_a_uniform_subsample_holding_all_its_classes(split, m):
    """A client contributing m samples contributes the first m of its part, which the
    module promises are a uniform random subsample: the parts here hold ~200 samples of
    several classes, each class so large that a uniform subsample of m misses one with
    probability below 1e-3 (computed), while a part left in class order (the chunks or
    shards concatenated) starts with one or a few classes only."""
    labels = balanced_labels()
    parts = split(labels)
    for part in parts:
        assert _classes_missed_by_a_uniform_prefix(labels, part, m) < 1e-3
        assert set(labels[part[:m]]) == set(labels[part])


def test_shards_cut_each_class_in_random_order():
    """Shards are cut from the samples sorted by label with ties in random order: a shard
    of 50 of a class's 100 samples is a random half of them, not a run of consecutive
    positions (a run has probability 51 / C(100, 50) < 1e-27 for each shard)."""
    labels = balanced_labels()
    parts = partition.shards(labels, 5, 4, seed=0)
    for part in parts:
        for k in np.unique(labels[part]):
            held = np.sort(part[labels[part] == k])
            if len(held) < 100:  # a client holding both shards of a class holds all of it
                ranks = np.searchsorted(np.flatnonzero(labels == k), held)
                assert ranks[-1] - ranks[0] + 1 > len(held), f"class {k}: a run of consecutive samples"


def test_dirichlet_gives_up_when_no_draw_reaches_min_size():
    labels = balanced_labels(per_class=10, classes=10)  # 10 clients need all 100 samples, 10 each
    with pytest.raises(ValueError, match="min_size=10: .* none of 1000 draws"):
        partition.dirichlet(labels, 10, 0.01, seed=0, min_size=10)


def test_quantity_skew_sizes_spread_with_sigma_and_respect_min_size():
    def spread(sigma):
        sizes = np.array([len(p) for p in partition.quantity_skew(LABELS, 20, 0, sigma=sigma, min_size=10)])
        assert sizes.min() >= 10 and sizes.sum() == len(LABELS)
        return sizes.std()

    assert spread(2.0) > spread(0.1)
    # a sigma whose weights overflow a float (e^(800 z)) still gives one large client
    sizes = sorted(len(p) for p in partition.quantity_skew(LABELS, 5, 3, sigma=800.0, min_size=10))
    assert sizes == [10, 10, 10, 10, len(LABELS) - 40]


def test_by_counts_gives_exact_counts_and_label_mix():
    dist = np.zeros((3, 10))
    dist[0, :2] = 0.5
    dist[1, 5] = 1.0
    dist[2] = 0.1
    parts = partition.by_counts(LABELS, [40, 30, 50], dist, seed=0)
    assert [len(p) for p in parts] == [40, 30, 50]
    assert_disjoint(parts, len(LABELS), covers=False)
    hist = partition.label_histograms(LABELS, parts, 10)
    np.testing.assert_array_equal(hist[0, :2], [20, 20])
    assert hist[1, 5] == 30
    np.testing.assert_array_equal(hist[2], np.full(10, 5))
    assert parts.notes == []


def test_by_counts_fills_from_other_classes_and_says_so():
    labels = balanced_labels(per_class=10, classes=3)
    dist = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    parts = partition.by_counts(labels, [8, 8], dist, seed=0)
    assert [len(p) for p in parts] == [8, 8]
    assert_disjoint(parts, len(labels), covers=False)
    hist = partition.label_histograms(labels, parts, 3)
    np.testing.assert_array_equal(hist[:, 0], [5, 5])  # class 0 shared in proportion to demand
    assert len(parts.notes) == 2 and "class 0: 3" in parts.notes[0]


def test_by_counts_shares_an_oversubscribed_class_in_proportion_to_the_demands():
    """Clients ask 8 and 4 of class 0's 10 samples: they get the largest-remainder rounding
    of 10 * (8, 4) / 12 = (6.67, 3.33), i.e. (7, 3), and the rest of their counts from the
    classes nobody asked for."""
    labels = balanced_labels(per_class=10, classes=3)
    asked = np.array([8, 4])
    parts = partition.by_counts(labels, asked, np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), seed=0)
    exact = 10 * asked / asked.sum()
    expected = np.floor(exact).astype(int)
    expected[np.argmax(exact - expected)] += 10 - expected.sum()  # the one sample left goes to the larger remainder
    hist = partition.label_histograms(labels, parts, 3)
    np.testing.assert_array_equal(hist[:, 0], expected)
    np.testing.assert_array_equal(hist.sum(axis=1), asked)
    assert len(parts.notes) == 2 and "class 0: 1" in parts.notes[0] and "class 0: 1" in parts.notes[1]


def test_by_counts_without_distributions_follows_the_pool():
    parts = partition.by_counts(LABELS, [500], seed=0)
    share = partition.label_histograms(LABELS, parts, 10)[0] / 500
    np.testing.assert_allclose(share, np.bincount(LABELS) / len(LABELS), atol=0.01)


def test_holdout_is_stratified_and_complementary():
    kept, held = partition.holdout(LABELS, 0.2, seed=0)
    assert len(held) == round(0.2 * len(LABELS))
    assert_disjoint([kept, held], len(LABELS), covers=True)
    np.testing.assert_allclose(np.bincount(LABELS[held]) / len(held), np.bincount(LABELS) / len(LABELS), atol=0.01)


def test_holdout_sizes_are_the_split_holdout_draws_and_refuse_an_empty_side_or_a_missing_class():
    labels = np.repeat(np.arange(3), [50, 30, 1])  # class 2 has one sample
    sizes = partition.holdout_sizes(labels, 0.1)
    assert sizes.tolist() == [5, 3, 0]  # 8.1 -> 8 held out; remainders 0, 0, 0.1: no sample of class 2
    for seed in range(3):  # the sizes do not depend on the seed the split is drawn with
        kept, held = partition.holdout(labels, 0.1, seed)
        assert np.bincount(labels[held], minlength=3).tolist() == sizes.tolist()
    with pytest.raises(ValueError, match=r"^validation_fraction=0.1: allowed is a share that holds out a sample of "
                                         r"every class; its 8 samples miss the classes \[2\]$"):
        partition.holdout(labels, 0.1, 0, key="validation_fraction", every_class=True)
    assert partition.holdout_sizes(np.repeat(np.arange(3), [50, 30, 10]), 0.1, every_class=True).tolist() == [5, 3, 1]
    with pytest.raises(ValueError, match=r"^split=0.001: allowed is a share that holds out at least one and keeps "
                                         r"at least one of the 81 samples \(it holds out 0\)$"):
        partition.holdout_sizes(labels, 0.001, key="split")
    with pytest.raises(ValueError, match=r"^fraction=0.999: .* \(it holds out 81\)$"):
        partition.holdout(labels, 0.999, 0)


@pytest.mark.parametrize(
    "call, key",
    [
        (lambda: partition.iid(LABELS, 0, 0), "num_clients=0"),
        (lambda: partition.iid(LABELS, len(LABELS) + 1, 0), f"num_clients={len(LABELS) + 1}"),  # gave empty parts
        (lambda: partition.dirichlet(LABELS, 5, -1.0, 0), "alpha=-1.0"),
        (lambda: partition.shards(LABELS, 10, 1000, 0), "shards_per_client=1000"),
        (lambda: partition.quantity_skew(LABELS, 5, 0, distribution="zipf"), "distribution='zipf'"),
        (lambda: partition.by_counts(LABELS, [2000], seed=0), "counts=\\[2000\\]"),
        (lambda: partition.by_counts(LABELS, [10], np.ones((1, 10)), seed=0), "label_distributions"),
        (lambda: partition.holdout(LABELS, 1.5, 0), "fraction=1.5"),
        (lambda: partition.iid(LABELS, 5, -1), "seed=-1"),
        (lambda: partition.dirichlet(LABELS, 5, 1.0, 0.5), "seed=0.5"),
        (lambda: partition.holdout(LABELS, 0.2, "0"), "seed='0'"),
        (lambda: partition.label_histograms(LABELS, [np.arange(5)], 9), "num_classes=9"),
        (lambda: partition.by_counts(LABELS, [[1], [2, 3]]), re.escape("counts=[[1], [2, 3]]")),  # numpy's words
    ],
)
def test_bad_arguments_name_key_value_and_what_is_allowed(call, key):
    with pytest.raises(ValueError, match=f"{key}.*allowed"):
        call()


def test_an_alpha_whose_dirichlet_draw_overflows_is_refused_and_one_below_still_splits_disjointly():
    # numpy's Dirichlet draw is all zeros once alpha * clients passes 1.8e308: each class went whole to one
    # client and several clients were handed the same samples (2200 assignments of 2000 samples).
    labels = np.repeat(np.arange(10), 200)
    bound = re.escape("allowed is a number > 0 of at most 8.99e+306 for 10 clients")
    with pytest.raises(ValueError, match=rf"^alpha=2e\+307: {bound}"):
        partition.dirichlet(labels, 10, 2e307, seed=0, min_size=0)
    with pytest.raises(ValueError, match=rf"^alpha=1.7e\+308: {bound}"):
        partition.quantity_skew(labels, 10, 0, distribution="dirichlet", alpha=1.7e308)
    for parts in (partition.dirichlet(labels, 10, 8e306, seed=0), partition.quantity_skew(
            labels, 10, 0, distribution="dirichlet", alpha=8e306)):
        assert sorted(np.concatenate(parts).tolist()) == list(range(2000))
        assert [len(p) for p in parts] == [200] * 10  # all but IID


def test_a_huge_alpha_splits_like_iid_without_shorting_the_last_clients():
    """From alpha N of about 1e32 the Dirichlet shares are exactly equal, and the rounding's
    ties went to the lowest clients in every class: 109 samples of each of 10 classes over
    10 clients gave [110] * 9 + [100] for every seed. Each class's left-over samples now go
    on from where the class before stopped: sizes within one of each other, as IID."""
    for counts, clients in (([109] * 10, 10), ([100] * 3, 7), ([97, 13, 55, 8, 100, 3, 77, 31, 64, 20], 6)):
        labels = np.repeat(np.arange(len(counts)), counts)
        for seed in range(3):
            parts = partition.dirichlet(labels, clients, 1e100, seed=seed)
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(labels)
            assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    assert partition._largest_remainder(5, np.ones(3), 2).tolist() == [2, 1, 2]  # ties from index 2 on, then 0


def test_dirichlet_federation_holds_out_validation_and_gives_each_clients_label_mix():
    from fl.data.federation import dirichlet_federation

    train = load_digits()[0]
    federation = dirichlet_federation(train, clients=20, alpha=0.3, seed=4, pool=1000, min_size=5)
    positions = [np.asarray(c.indices) for c in federation.clients]
    assert_disjoint(positions, len(train), covers=False)
    assert len(federation.validation) == 200 and sum(len(p) for p in positions) == 800
    assert min(len(p) for p in positions) >= 5
    for k, p in enumerate(positions):  # row k is client k's label shares
        shares = np.bincount(LABELS[p], minlength=10) / len(p)
        np.testing.assert_allclose(federation.label_distributions[k], shares)
    validation_pool = {tuple(x) for x in federation.validation.x.flatten(1).tolist()}
    assert not any(tuple(x) in validation_pool for p in positions for x in train.x[p].flatten(1).tolist())
    with pytest.raises(ValueError, match="pool=5000: allowed is 1 to 1438"):
        dirichlet_federation(train, clients=20, alpha=0.3, seed=4, pool=5000)
    for options, key in [
        ({"clients": 0}, "clients=0"),
        ({"min_size": 0}, "min_size=0"),
        ({"validation_fraction": 0.0}, "validation_fraction=0.0"),
        ({"validation_fraction": 0.1, "pool": 4}, "validation_fraction=0.1: .*holds out 0"),
    ]:
        arguments = {"clients": 2, "alpha": 0.3, "seed": 4, "pool": 1000, "min_size": 1} | options
        with pytest.raises(ValueError, match=key):
            dirichlet_federation(train, **arguments)


def test_dirichlet_federation_holds_out_a_validation_sample_of_every_class():
    """A pool of 60 digits held out 6 for validation, of 6 classes: clients held the 4 others, whose per-class
    validation loss (0 samples) made IncFL's losses NaN far from the cause."""
    from fl.data.federation import dirichlet_federation

    train = load_digits()[0]
    pool = np.random.default_rng(child_seed(0, 0)).permutation(len(train))[:60]  # seed 0's pool
    assert np.bincount(train.labels()[pool]).tolist() == [11, 5, 10, 6, 4, 4, 3, 7, 6, 4]
    # 6 held out: 6 * counts / 60 = 1.1 .5 1 .6 .4 .4 .3 .7 .6 .4, floors 1 0 1 0 0 0 0 0 0 0 and the other 4
    # samples to the largest remainders, classes 7, 3, 8, 1: none of classes 4, 5, 6, 9
    with pytest.raises(ValueError, match=r"^pool=60 with validation_fraction=0.1: allowed is a share that holds out "
                                         r"a sample of every class; its 6 samples miss the classes \[4, 5, 6, 9\]$"):
        dirichlet_federation(train, clients=4, alpha=1.0, seed=0, pool=60, validation_fraction=0.1, min_size=2)
    # 12 held out: 2.2 1 2 1.2 .8 .8 .6 1.4 1.2 .8, floors 2 1 2 1 0 0 0 1 1 0 and 4 more to classes 4, 5, 9, 6
    federation = dirichlet_federation(train, clients=4, alpha=1.0, seed=0, pool=60, min_size=2)
    assert torch.bincount(federation.validation.y).tolist() == [2, 1, 2, 1, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("call, message", [
    (lambda: partition.dirichlet(LABELS, 2000, 1.0, seed=0),
     "num_clients=2000: allowed is at most 1438 (1438 samples, each client holding at least min_size=1)"),
    (lambda: partition.quantity_skew(LABELS, 2000, 0),
     "num_clients=2000: allowed is at most 1438 (1438 samples, each client holding at least min_size=1)"),
    (lambda: partition.quantity_skew(LABELS, 1500, 0, min_size=5),
     "num_clients=1500: allowed is at most 287 (1438 samples, each client holding at least min_size=5)"),
    (lambda: partition.shards(LABELS, 2000, 1, seed=0),
     "num_clients=2000: allowed is at most 1438, the number of samples (every client gets at least one shard"),
    # fewer clients than samples: a smaller min_size or fewer shards each would do, and is named
    (lambda: partition.dirichlet(LABELS, 300, 1.0, seed=0, min_size=5),
     "min_size=5: allowed is at most 4 (1438 samples for 300 clients)"),
    (lambda: partition.shards(LABELS, 700, 3, seed=0),
     "shards_per_client=3: allowed is at most 2 (1438 samples for 700 clients)"),
])
def test_more_clients_than_samples_names_the_client_count_and_its_bound(call, message):
    """It named min_size (or shards_per_client) with the bound 0, below the least either allows."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        call()


def test_dirichlet_federation_names_clients_when_they_outnumber_the_samples():
    from fl.data.federation import dirichlet_federation

    train = load_digits()[0]  # 1438 samples, 288 held out for validation: 1150 left
    with pytest.raises(ValueError, match=r"^clients=1200: allowed is at most 1150 \(1150 samples, each client "
                                         r"holding at least min_size=1\)$"):
        dirichlet_federation(train, clients=1200, alpha=1.0, seed=0, min_size=1)


def test_dirichlet_federation_draws_pool_holdout_and_split_from_the_seeds_own_streams():
    """Streams 0, 1 and 2 of the seed (child_seed); all three used to draw from one stream,
    so the held-out set's order repeated the pool's permutation."""
    from fl.algorithms import child_seed
    from fl.data.federation import dirichlet_federation

    train = load_digits()[0]
    federation = dirichlet_federation(train, clients=4, alpha=1.0, seed=7, pool=800)
    indices = np.random.default_rng(child_seed(7, 0)).permutation(len(train))[:800]
    kept, held = partition.holdout(train.labels()[indices], 0.2, child_seed(7, 1))
    parts = partition.dirichlet(train.labels()[indices[kept]], 4, 1.0, child_seed(7, 2), min_size=5)
    assert [list(c.indices) for c in federation.clients] == [list(indices[kept][p]) for p in parts]
    assert torch.equal(federation.validation.y, train.y[indices[held]])
    other = dirichlet_federation(train, clients=4, alpha=1.0, seed=8, pool=800)
    assert [list(c.indices) for c in federation.clients] != [list(c.indices) for c in other.clients]
