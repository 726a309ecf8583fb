"""What the training engine accepts: initial models, datasets and their views, clients'
test sets, the simulated compute time of small clients, FedBuff without data, and the
checks of Shakespeare's encoding, delivery targets, partitions, downloads and MNIST-1D.

Each bad input gets one ValueError (ChecksumError for a file) naming the key, the
value and what is allowed, before any training, rather than a raw torch or numpy
error or silently wrong numbers."""

import pickle
import re

import numpy as np
import pytest
import torch

from fl import evaluation
from fl.algorithms import FedAvg
from fl.algorithms.incfl import train_local_models
from fl.data import partition
from fl.data.dataset import ArrayDataset, Subset, load_digits
from fl.data.download import ChecksumError, download
from fl.data.mnist1d import load_mnist1d
from fl.data.shakespeare import VOCABULARY, decode, encode
from fl.delivery import deliver
from fl.executors import ClientTask, SerialExecutor, VectorisedExecutor
from fl.models import build_model, get_params
from fl.runtime import ClientProfile, Deadline, FedBuff, simulate
from fl.runtime.behaviours import steps_by

TRAIN, TEST = load_digits()
SUBSETS = [TRAIN.subset(p) for p in partition.iid(TRAIN.labels(), 3, 0)]
QUIET = {"progress": False}
MODEL = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(8,))
PARAMS = get_params(MODEL)
X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
Y = torch.arange(40) % 10
DATA = ArrayDataset("d", X, Y, 10)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def with_entry(x, sample, value):
    x = x.clone()
    x[sample, 0] = value
    return x


# ------------------------------------------------------------------- init_params


@pytest.mark.parametrize("executor", [SerialExecutor(), VectorisedExecutor()])
def test_init_params_of_another_shape_are_refused_by_every_executor(executor):
    """The serial executor's copy_ broadcast an (8, 1) weight into the (8, 64) layer and
    trained on; the vectorised one raised a raw RuntimeError."""
    narrow = {k: v[:, :1] if v.dim() == 2 else v for k, v in PARAMS.items()}
    with pytest.raises(ValueError, match=r"^init_params\['net.1.weight'\] \(shape \(8, 1\), torch.float32\): "
                                         r"allowed is shape \(8, 64\), torch.float32, as the model's own$"):
        simulate(MODEL, SUBSETS, FedAvg(), 1, init_params=narrow, executor=executor, **QUIET)


@pytest.mark.parametrize(
    "init, message",
    [
        ({k: v.long() for k, v in PARAMS.items()},
         r"^init_params\['net.1.weight'\] \(shape \(8, 64\), torch.int64\): allowed is shape \(8, 64\), torch.float32"),
        ({k: v for k, v in PARAMS.items() if k != "net.1.weight"},
         r"^init_params \(missing keys \['net.1.weight'\]\): allowed is the keys of the model's state, \["),
        ({**PARAMS, "extra": torch.zeros(1)}, r"^init_params \(unknown keys \['extra'\]\): allowed is the keys"),
        ({**PARAMS, "net.1.bias": [0.0] * 8}, r"^init_params\['net.1.bias'\] \(of type list\): allowed is a tensor"),
        (list(PARAMS.values()), r"^init_params \(of type list\): allowed is a mapping name -> tensor"),
        ({**PARAMS, "net.1.weight": PARAMS["net.1.weight"].clone().fill_(float("nan"))},
         r"^init_params\['net.1.weight'\] holds nan: allowed is finite weights$"),
    ],
)
def test_init_params_that_do_not_fit_the_model_are_refused(init, message):
    """A missing key gave a raw KeyError, integer tensors a raw dtype error, an unknown
    key was ignored; a NaN weight was reported as local training that diverged ("allowed is
    a step size small enough for finite losses"), which no step size mends."""
    with pytest.raises(ValueError, match=message):
        simulate(MODEL, SUBSETS, FedAvg(), 1, init_params=init, **QUIET)


def test_local_models_refuse_init_params_that_do_not_fit_the_model():
    """train_local_models hands init_params to the serial executor, whose copy_ broadcast
    an (8, 1) weight into the (8, 64) layer."""
    narrow = {k: v[:, :1] if v.dim() == 2 else v for k, v in PARAMS.items()}
    with pytest.raises(ValueError, match=r"^init_params\['net.1.weight'\] \(shape \(8, 1\)"):
        train_local_models(MODEL, narrow, SUBSETS, epochs=1, batch_size=16, lr=0.1, seed=0)


# ------------------------------------------------------------- datasets and views


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ArrayDataset("d", X.numpy(), Y, 10), r"^x of dataset 'd' \(of type ndarray\): allowed is a torch"),
        (lambda: ArrayDataset("d", X, Y.numpy(), 10), r"^y of dataset 'd' \(of type ndarray\): allowed is a torch"),
        (lambda: ArrayDataset("d", X.double(), Y, 10),
         r"^x of dataset 'd' \(shape \(40, 5\), torch.float64\): allowed is .* torch.float32 features or torch.int64"),
        (lambda: ArrayDataset("d", X, Y.int(), 10),
         r"^y of dataset 'd' \(shape \(40,\), torch.int32\): allowed is a 1-D torch.int64 tensor of labels$"),
        (lambda: ArrayDataset("d", X, Y[:, None], 10), r"^y of dataset 'd' \(shape \(40, 1\), torch.int64\): allowed"),
        (lambda: ArrayDataset("d", X, Y[:39], 10),
         r"^y of dataset 'd' \(39 labels\): allowed is one label for each of the 40 inputs in x$"),
        (lambda: ArrayDataset("d", X, Y, 5),
         r"^y of dataset 'd' \(labels from 0 to 9\): allowed is labels in \[0, num_classes\) = \[0, 5\)$"),
        (lambda: ArrayDataset("d", X, Y - 1, 10), r"^y of dataset 'd' \(labels from -1 to 8\): allowed is labels in"),
        (lambda: ArrayDataset("d", X, Y, 0), r"^num_classes=0: allowed is an integer >= 1$"),
        (lambda: ArrayDataset("d", with_entry(X, 3, float("nan")), Y, 10),
         r"^x of dataset 'd' \(sample 3 holds a NaN or infinite entry\): allowed is finite inputs$"),
        (lambda: ArrayDataset("d", with_entry(X, 7, -float("inf")), Y, 10), r"^x of dataset 'd' \(sample 7 holds"),
    ],
)
def test_a_dataset_outside_its_contract_is_refused_when_it_is_made(make, message):
    """Each of these trained into a raw error that depended on the executor (numpy
    arrays, float64 inputs, int32 or out-of-range labels) or into TrainingDiverged
    blaming the step size (a NaN input)."""
    with pytest.raises(ValueError, match=message):
        make()


def test_token_indices_and_empty_datasets_keep_the_contract():
    tokens = ArrayDataset("tokens", torch.randint(0, len(VOCABULARY), (6, 80)), torch.arange(6), len(VOCABULARY))
    assert tokens.feature_shape == (80,)
    assert len(ArrayDataset("empty", X[:0], Y[:0], 10)) == 0


@pytest.mark.parametrize(
    "indices, message",
    [
        ([0, 10**6], r"^indices \(positions from 0 to 1000000\): allowed is positions in \[0, 40\)$"),
        ([0, -1], r"^indices \(positions from -1 to 0\): allowed is positions in \[0, 40\)$"),
        ([0.0, 1.5], r"^indices \(shape \(2,\), dtype float64\): allowed is a 1-D sequence of integer positions in "
                     r"\[0, 40\)$"),
        ([[0, 1]], r"^indices \(shape \(1, 2\), dtype int64\): allowed is a 1-D sequence"),
    ],
)
def test_views_through_positions_outside_the_dataset_are_refused(indices, message):
    """A position past the end raised a raw IndexError at the first batch; a negative one
    silently trained on a sample counted from the end; a float one was truncated."""
    with pytest.raises(ValueError, match=message):
        DATA.subset(indices)
    with pytest.raises(ValueError, match=message):
        Subset(DATA, np.asarray(indices))


def test_views_keep_their_positions_as_int64():
    assert len(DATA.subset([])) == 0 and DATA.subset([]).indices.dtype == np.int64
    view = DATA.subset(np.array([39, 0], dtype=np.int32))
    assert view.indices.dtype == np.int64 and torch.equal(view.tensors()[1], Y[[39, 0]])


def test_inputs_of_another_dtype_than_the_training_data_are_refused():
    """Integer inputs beside float ones reached the model and raised a raw dtype error."""
    tokens = ArrayDataset("tokens", torch.zeros(len(TEST), 1, 8, 8, dtype=torch.int64), TEST.y, 10)
    with pytest.raises(ValueError, match=r"^test \(features of shape \(1, 8, 8\), torch.int64, 10 classes\): "
                                         r"allowed is the shape, dtype and classes of train_subsets\[0\]"):
        simulate("mlp", SUBSETS, FedAvg(), 1, test=tokens, **QUIET)


# ------------------------------------------------------------------ client tests


@pytest.mark.parametrize("empty", [ArrayDataset("e", TEST.x[:0], TEST.y[:0], 10), TEST.subset([])])
def test_an_empty_client_test_set_is_refused_as_an_empty_test_set_is(empty):
    """It was accepted and recorded an accuracy of NaN."""
    with pytest.raises(ValueError, match=r"^client_tests\[1\] \('(e|digits)', 0 samples\): allowed is a set with "
                                         "samples to evaluate on, or no entry for the client$"):
        simulate("mlp", SUBSETS, FedAvg(), 1, client_tests={1: empty}, **QUIET)


def test_a_client_test_set_that_is_no_dataset_is_refused():
    with pytest.raises(ValueError, match=r"^client_tests\[1\] \(of type str\): allowed is an ArrayDataset or a Subset"):
        simulate("mlp", SUBSETS, FedAvg(), 1, client_tests={1: "digits"}, **QUIET)


# ------------------------------------------------------------ simulated compute time


@pytest.mark.parametrize(
    "n, batch_size, steps", [(3, 32, 1), (3, 32, 5), (40, 32, 3), (64, 32, 5), (10, 3, 7), (0, 4, 0)]
)
def test_the_samples_charged_are_those_of_the_mini_batches(n, batch_size, steps):
    """What the simulated clock, the deadline's step count and Ray's load estimate charge."""
    task = ClientTask(0, 0, TRAIN.subset(np.arange(n)), 1, batch_size, 0.1, np.random.SeedSequence(0), steps=steps)
    assert task.data.samples_in_steps(steps, batch_size) == sum(len(batch) for batch in task.batches())


def test_a_client_with_fewer_samples_than_a_batch_is_charged_for_its_samples():
    """Speed is in samples per second: two epochs over 3 samples at 1 sample/s take 6 s,
    over 40 samples 80 s. Every step was charged a full batch of 32 (64 s and 128 s), so
    under a 10 s deadline the small client never answered."""
    small, large, one = TRAIN.subset(np.arange(3)), TRAIN.subset(np.arange(3, 43)), ClientProfile(speed=1.0)
    strategy = FedAvg(batch_size=32, epochs=2)
    assert simulate("mlp", [small], strategy, 1, profiles=one, **QUIET).history[0].time == 6.0
    assert simulate("mlp", [large], strategy, 1, profiles=one, **QUIET).history[0].time == 80.0
    record = simulate("mlp", [small], strategy, 1, profiles=one, behaviours=[Deadline(10.0)], **QUIET).history[0]
    assert (record.updates, record.time) == (1, 6.0)


def test_partial_work_counts_the_samples_of_the_steps_that_fit():
    """40 samples, B = 32: each pass is a batch of 32, then one of 8. At 1 sample/s a 75 s
    deadline fits 3 of the 4 steps of two epochs (32 + 8 + 32 = 72 samples), not the 2
    that charging 32 a step allowed."""
    task = ClientTask(0, 0, TRAIN.subset(np.arange(40)), 2, 32, 0.1, np.random.SeedSequence(0))
    one = ClientProfile(speed=1.0)
    result = simulate("mlp", [task.data], FedAvg(batch_size=32, epochs=2), 1, profiles=one,
                      behaviours=[Deadline(75.0)], **QUIET)
    assert (result.history[0].updates, result.history[0].time) == (1, 72.0)
    assert [steps_by(deadline, 0.0, one, task, 0) for deadline in (31.9, 32.0, 71.9, 72.0, 79.9, 80.0)] == [
        0, 1, 2, 3, 3, 4]


# ------------------------------------------------------------------------ FedBuff


def test_fedbuff_with_no_client_holding_data_takes_empty_steps_as_synchronous_rounds_are_empty():
    """It raised a RuntimeError about clients that never answer."""
    empty = [TRAIN.subset([])] * 3
    sync = simulate("mlp", empty, FedAvg(), 2, test=TEST, **QUIET)
    buffered = simulate("mlp", empty, FedAvg(), 2, test=TEST, behaviours=[FedBuff(buffer_size=2)], **QUIET)
    for result in (sync, buffered):
        assert [(r.round_index, r.updates, r.time) for r in result.history] == [(0, 0, 0.0), (1, 0, 0.0)]
        assert same(result.params, result.initial_params)
    assert [r.test_accuracy for r in buffered.history] == [r.test_accuracy for r in sync.history]


# ----------------------------------------------------------- Shakespeare's encoding


def test_characters_outside_the_vocabulary_become_spaces():
    """As documented; they became '?'."""
    assert decode(encode("café – naïve\tend\n")) == "caf    na ve end\n"
    assert decode(encode(VOCABULARY)) == VOCABULARY and encode("a").dtype == np.int64


# ------------------------------------------- delivery, partitions, downloads, MNIST-1D


@pytest.mark.parametrize("target", ["0.5", True, float("nan"), 1.5])
def test_a_delivery_target_that_is_no_number_in_0_1_is_refused(target):
    """A string raised a raw TypeError; True was taken as 1."""
    with pytest.raises(ValueError, match=rf"^target={re.escape(repr(target))}: allowed is None or a number in \["):
        deliver(MODEL, PARAMS, PARAMS, TEST, np.full(10, 0.1), target)


@pytest.mark.parametrize(
    "part, message",
    [
        ([5], r"^parts\[1\] \(positions from 5 to 5\): allowed is positions in \[0, 4\)$"),
        ([-1], r"^parts\[1\] \(positions from -1 to -1\): allowed is positions in \[0, 4\)$"),
        ([0.5], r"^parts\[1\] \(shape \(1,\), dtype float64\): allowed is a 1-D sequence of integer positions"),
    ],
)
def test_label_histograms_refuse_parts_outside_the_labels(part, message):
    """A position past the end raised a raw IndexError; a negative one counted a label from the end."""
    with pytest.raises(ValueError, match=message):
        partition.label_histograms(np.array([0, 1, 1, 0]), [np.array([0, 1]), np.array(part)], 2)


def test_download_names_a_url_it_cannot_fetch_from(tmp_path):
    """A plain path gave urllib's 'unknown url type'."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"hello")
    with pytest.raises(ValueError, match=rf"^url='{re.escape(str(source))}': allowed is an https://, http:// or "
                                         r"file:// URL \(a local file is file:///absolute/path\)$"):
        download(str(source), tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.bin"]  # not even a partial file
    assert download(source.as_uri(), tmp_path / "out.bin").read_bytes() == b"hello"


def write_mnist1d(root, **changes):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(6, 40)), "y": np.arange(6) % 10,
              "x_test": rng.normal(size=(3, 40)), "y_test": np.arange(3)}
    (root / "mnist1d").mkdir(exist_ok=True)
    (root / "mnist1d" / "mnist1d_data.pkl").write_bytes(pickle.dumps({**arrays, **changes}))


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"y_test": np.array([0, 1, 11])}, r"y of dataset 'mnist1d' \(labels from 0 to 11\)"),
        ({"x": np.zeros((6, 41))}, r"x of shape \(6, 41\), float64: expected \(n, 40\) numbers"),
        ({"y": np.arange(5)}, r"y of shape \(5,\), int64: expected \(6,\) integers, a label per sequence"),
        ({"x": np.full((6, 40), 0.5)}, r"mnist1d: the training inputs are constant \(std 0\)"),
        ({"x_test": np.full((3, 40), np.nan)}, r"x of dataset 'mnist1d' \(sample 0 holds a NaN"),
    ],
)
def test_an_unverified_mnist1d_file_that_is_not_the_dataset_is_named(tmp_path, changes, problem):
    """With verify=False labels above 9 and sequences of 41 values loaded, constant inputs
    were divided by a std of 0, and labels of another length raised an error naming no file."""
    write_mnist1d(tmp_path, **changes)
    path = tmp_path / "mnist1d" / "mnist1d_data.pkl"
    with pytest.raises(ChecksumError, match=rf"^{re.escape(str(path))}: not the MNIST-1D pickle \({problem}"):
        load_mnist1d(tmp_path, verify=False)


def test_an_unverified_mnist1d_file_of_the_datasets_form_loads(tmp_path):
    write_mnist1d(tmp_path)
    train, test = load_mnist1d(tmp_path, verify=False)
    assert (len(train), len(test), train.feature_shape) == (6, 3, (1, 40))


# ------------------------------------------------------------------- evaluation


def test_an_empty_set_is_refused_rather_than_scored_nan():
    """evaluate() returned {'loss': nan, 'accuracy': nan}, and a valuation on an empty
    validation set NaN utilities."""
    empty = ArrayDataset("empty", X[:0], Y[:0], 10)
    model = build_model("mlp", (5,), 10, seed=0, hidden=(4,))
    for score in (evaluation.evaluate, evaluation.per_class_accuracy):
        with pytest.raises(ValueError, match=r"^dataset 'empty' \(0 samples\): allowed is a set with samples"):
            score(model, get_params(model), empty)
    stacked = {k: v[None] for k, v in get_params(model).items()}
    with pytest.raises(ValueError, match=r"^dataset 'empty' \(0 samples\)"):
        evaluation.evaluate_many(model, stacked, empty)


@pytest.mark.parametrize("p, message", [
    (1.0, r"^label_distribution \(shape \(\)\): allowed is a \(K,\) distribution or an \(N, K\) array"),
    ("x", r"^label_distribution='x': allowed is"),
    (np.full((2, 2, 3), 1 / 3), r"^label_distribution \(shape \(2, 2, 3\)\): allowed is"),
    ([[1.0, 0.0, 0.0], [0.5, 0.5, 0.1]], r"^label_distribution\[1\] \(least entry 0.1, sum 1.1\): allowed is"),
    ([0.5, np.nan, 0.5], r"^label_distribution \(least entry nan, sum nan\): allowed is"),
])
def test_a_label_distribution_that_is_none_names_itself(p, message):
    """A number raised a raw IndexError, strings numpy's conversion error, a 3-D array was
    taken, and a bad row was not named."""
    with pytest.raises(ValueError, match=message):
        evaluation.accuracy_on_distribution(np.full(3, 0.5), p)


@pytest.mark.parametrize("acc, message", [
    (np.ones((2, 3)), r"^per_class_acc \(shape \(2, 3\)\): allowed is a \(K,\) array of accuracies in \[0, 1\]"),
    (0.5, r"^per_class_acc \(shape \(\)\): allowed is a \(K,\) array"),
    (["a", "b", "c"], r"^per_class_acc=\['a', 'b', 'c'\]: allowed is a \(K,\) array"),
    ([0.5, 1.5, 0.2], r"^per_class_acc=\[0.5, 1.5, 0.2\]: allowed is a \(K,\) array of accuracies in \[0, 1\]"),
])
def test_per_class_accuracies_that_are_none_name_themselves(acc, message):
    """A (2, 3) array of ones scored an "accuracy" of 2.0 on a distribution of three classes; a
    number raised a raw IndexError, strings numpy's conversion error. NaN (a class absent
    from the test set) stays allowed."""
    with pytest.raises(ValueError, match=message):
        evaluation.accuracy_on_distribution(acc, np.full(3, 1 / 3))
    assert evaluation.accuracy_on_distribution([0.5, np.nan, 0.7], [0.5, 0.0, 0.5]) == pytest.approx(0.6)


@pytest.mark.parametrize("call, message", [
    (lambda: FedAvg(lr=1e308),  # accepted, then torch could not convert it as the clients trained
     r"^lr=1e\+308: allowed is a finite number > 0 that float32, the models' precision, holds \(at most 3.403e\+38\)$"),
    (lambda: build_model([], [64], 10), r"^model=\[\]: allowed is one of mlp, "),  # "unhashable type: 'list'"
    (lambda: partition.label_histograms(np.arange(10) % 3, None, 3),
     r"^parts=None: allowed is a non-empty list of index arrays, one per part$"),
    (lambda: partition.label_histograms(np.arange(10) % 3, [], 3),  # numpy's "need at least one array to stack"
     r"^parts=\[\]: allowed is a non-empty list of index arrays, one per part$"),
])
def test_the_engines_public_functions_refuse_what_failed_deep_in_torch_or_numpy(call, message):
    with pytest.raises(ValueError, match=message):
        call()
