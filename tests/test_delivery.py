import numpy as np
import pytest
import torch

from fl.algorithms import FedAvg
from fl.data import partition
from fl.data.dataset import load_digits
from fl.delivery import DeliveryPath, deliver, interpolate
from fl.evaluation import accuracy, accuracy_on_distribution, per_class_accuracy
from fl.models import build_model, get_params
from fl.server import run_federated

TRAIN, TEST = load_digits()
SKEWED = np.array([0.4, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05, 0.04, 0.03, 0.03])
OTHER_ARCHITECTURE = object()  # stands for the params of an MLP of another width


@pytest.fixture(scope="module")
def trained():
    kept, held = partition.holdout(TRAIN.labels(), 0.25, seed=0)
    validation = type(TRAIN)("digits-validation", TRAIN.x[held], TRAIN.y[held], 10)
    clients = [TRAIN.subset(kept[p]) for p in partition.iid(TRAIN.labels()[kept], 5, seed=0)]
    result = run_federated("mlp", clients, FedAvg(batch_size=16), 10, seed=0, progress=False)
    return result, validation


def test_accuracy_on_the_test_frequencies_is_plain_accuracy(trained):
    result, _ = trained
    per_class = per_class_accuracy(result.model, result.params, TEST)
    frequencies = np.bincount(TEST.labels()) / len(TEST)
    expected = accuracy(result.model, result.params, TEST)
    assert accuracy_on_distribution(per_class, frequencies) == pytest.approx(expected)
    rows = accuracy_on_distribution(per_class, np.stack([frequencies, SKEWED]))
    assert rows.shape == (2,) and rows[1] == pytest.approx(float(SKEWED @ per_class))


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.85])
def test_delivery_hits_the_target_on_validation(trained, target):
    result, validation = trained
    d = deliver(result.model, result.params, result.initial_params, validation, SKEWED, target)
    assert 0.0 < d.lam < 1.0
    assert abs(d.validation_accuracy - target) <= 0.02
    test_accuracy = accuracy_on_distribution(per_class_accuracy(result.model, d.params, TEST), SKEWED)
    assert abs(test_accuracy - target) <= 0.1  # validation and test sets differ


def test_targets_above_the_global_model_or_none_get_the_global_model(trained):
    result, validation = trained
    for target in (None, 1.0):
        d = deliver(result.model, result.params, result.initial_params, validation, SKEWED, target)
        assert d.lam == 1.0 and d.params is result.params
    # a target of exactly a(1), on a segment whose weak end (the trained model here) scores higher
    reversed_path = DeliveryPath(result.model, result.initial_params, result.params, validation)
    d = reversed_path.deliver(SKEWED, reversed_path.accuracy(1.0, SKEWED))
    assert d.lam == 1.0 and d.params is result.initial_params


def test_targets_below_the_weak_model_get_the_weak_model(trained):
    result, validation = trained
    d = deliver(result.model, result.params, result.initial_params, validation, SKEWED, 0.0)
    assert d.lam == 0.0
    assert all(torch.allclose(d.params[k], result.initial_params[k]) for k in d.params)


def test_interpolation_endpoints_and_midpoint(trained):
    result, _ = trained
    g, w = result.params, result.initial_params
    for lam, expected in ((0.0, w), (1.0, g)):
        mixed = interpolate(g, w, lam)
        assert all(torch.allclose(mixed[k], expected[k]) for k in g)
    half = interpolate(g, w, 0.5)
    assert all(torch.allclose(half[k], (g[k] + w[k]) / 2) for k in g)


def test_delivery_serves_the_nearest_point_its_bisection_scored(trained):
    """Bisection on [0, 1] from a(0) < target < a(1): each halving scores the midpoint and
    keeps the half where a crosses the target, until a point is within the tolerance
    (inclusive) or after max_steps halvings; served is the nearest point scored. Here the
    targets lie between a(1/4) and a(3/8), below a(1/2) and a(1): the halvings score 1/2,
    1/4, then 3/8."""
    result, validation = trained
    path = DeliveryPath(result.model, result.params, result.initial_params, validation)
    a = {lam: path.accuracy(lam, SKEWED) for lam in (0.0, 0.25, 0.375, 0.5, 1.0)}
    gap = a[0.375] - a[0.25]
    assert a[0.0] < a[0.25] < a[0.375] and min(a[0.5], a[1.0]) > a[0.25] + 1.2 * gap
    near_quarter, between = a[0.25] + 0.1 * gap, a[0.25] + 0.6 * gap  # between: nearer a(1/4) than a(1/2)

    def served(target, **options):
        d = path.deliver(SKEWED, target, **options)
        return d.lam, d.validation_accuracy

    # no halving: the nearer end; at lam = 1 the global model itself
    assert served(a[0.0] + 0.01, max_steps=0) == (0.0, a[0.0])
    assert served(a[1.0] - 0.01, max_steps=0) == (1.0, a[1.0])
    assert path.deliver(SKEWED, a[1.0] - 0.01, max_steps=0).params is result.params
    # 1/4, scored by the second halving, stays the nearest when 3/8 is scored after it
    for steps in (2, 3):
        assert served(near_quarter, tolerance=0.0, max_steps=steps) == (0.25, a[0.25])
    # 3/8 is nearer still to the target between; 1/4, exactly the tolerance away, ends the search before it
    assert served(between, tolerance=0.0, max_steps=3) == (0.375, a[0.375])
    assert served(between, tolerance=between - a[0.25], max_steps=3) == (0.25, a[0.25])


def test_bad_target_is_refused(trained):
    result, validation = trained
    with pytest.raises(ValueError, match="target=1.5.*allowed"):
        deliver(result.model, result.params, result.initial_params, validation, SKEWED, 1.5)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"tolerance": -1.0}, r"^tolerance=-1.0: allowed is a finite number >= 0"),
        ({"tolerance": float("nan")}, r"^tolerance=nan: allowed is a finite number >= 0"),
        ({"max_steps": -3}, r"^max_steps=-3: allowed is an integer >= 0"),
        ({"max_steps": 2.5}, r"^max_steps=2.5: allowed is an integer >= 0"),
        ({"label_distribution": np.stack([SKEWED, SKEWED])},
         r"^label_distribution \(shape \(2, 10\)\): allowed is one agent's distribution over the 10 classes"),
        ({"label_distribution": 2 * SKEWED},
         r"^label_distribution \(least entry 0.06, sum 2.0\d*\): allowed is entries >= 0 that sum to 1$"),
        ({"weak_params": OTHER_ARCHITECTURE}, r"^weak_params\['[\w.]+'\] \(shape \(7, 64\), torch.float32\): allowed"),
        ({"global_params": OTHER_ARCHITECTURE}, r"^global_params\['[\w.]+'\] \(shape \(7, 64\)"),
        ({"validation": None}, r"^validation \(a NoneType\): allowed is an ArrayDataset"),  # an AttributeError
    ],
)
def test_bad_delivery_arguments_are_refused(trained, change, expected):
    """max_steps=-3 served the global model, far off the target, and a negative or NaN
    tolerance was taken; max_steps=2.5 gave a TypeError, an (N, K) distribution numpy's
    ambiguous truth value, and a model of another architecture torch's RuntimeError."""
    result, validation = trained
    other = get_params(build_model("mlp", TRAIN.feature_shape, 10, np.random.SeedSequence(0), hidden=(7,)))
    arguments = dict(model=result.model, global_params=result.params, weak_params=result.initial_params,
                     validation=validation, label_distribution=SKEWED, target=0.5)
    arguments.update({key: other if value is OTHER_ARCHITECTURE else value for key, value in change.items()})
    with pytest.raises(ValueError, match=expected):
        deliver(**arguments)


def test_a_validation_set_without_a_class_the_agent_weighs_is_refused(trained):
    """Every comparison with the NaN accuracy was False, so the weak model was served."""
    result, validation = trained
    no_three = validation.labels() != 3
    partial = type(TRAIN)("no-3", validation.x[no_three], validation.y[no_three], 10)
    with pytest.raises(ValueError, match=r"^validation \(\d+ samples\): allowed is a set holding every class"):
        deliver(result.model, result.params, result.initial_params, partial, SKEWED, 0.5)


def test_a_path_serving_many_agents_scores_each_point_once_and_serves_as_deliver_does(trained, monkeypatch):
    """The oracle serves every agent from one path: the endpoints and the first halvings
    are shared, so it evaluates far fewer models than one bisection per agent would."""
    import fl.delivery

    result, validation = trained
    evaluated = []
    real = fl.delivery.per_class_accuracy

    def counted(model, params, dataset):
        evaluated.append(1)
        return real(model, params, dataset)

    monkeypatch.setattr(fl.delivery, "per_class_accuracy", counted)
    rng = np.random.default_rng(0)
    asks = [(rng.dirichlet(np.ones(10)), target) for target in np.linspace(0.3, 0.85, 12)]
    alone = [deliver(result.model, result.params, result.initial_params, validation, p, t) for p, t in asks]
    per_agent = len(evaluated)
    evaluated.clear()
    path = DeliveryPath(result.model, result.params, result.initial_params, validation)
    shared = [path.deliver(p, t) for p, t in asks]
    assert len(evaluated) == len(path._per_class) < per_agent / 2
    for a, b in zip(alone, shared):
        assert (a.lam, a.validation_accuracy) == (b.lam, b.validation_accuracy)
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
