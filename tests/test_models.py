import pytest
import torch

import fl.models as models
from fl.models import MODEL_NAMES, build_model, get_params


@pytest.mark.parametrize("name", ["mlp", "cnn", "small_cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_map_inputs_to_logits(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.zeros(4, *shape)).shape == (4, 10)


@pytest.mark.parametrize(
    "name, shape, inputs",
    [
        ("lenet5", (1, 28, 28), torch.zeros(2, 1, 28, 28)),
        ("resnet8", (3, 32, 32), torch.zeros(2, 3, 32, 32)),
        ("resnet18", (1, 8, 8), torch.zeros(2, 1, 8, 8)),
        ("char_lstm", (80,), torch.zeros(2, 80, dtype=torch.long)),
    ],
)
def test_models_of_sibling_modules_are_built_from_shape_and_classes(name, shape, inputs):
    model = build_model(name, shape, 12)
    assert model(inputs).shape == (2, 12)


def test_cnn_is_mcmahan_et_al_model_on_mnist():
    model = build_model("cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 1_663_370


def test_mlp_hidden_sizes_are_configurable():
    model = build_model("mlp", (1, 8, 8), 10, hidden=(32, 16))
    assert [p.shape for p in model.parameters() if p.ndim == 2] == [(32, 64), (16, 32), (10, 16)]


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = get_params(build_model("mlp", (1, 8, 8), 10, seed=7))
    assert torch.equal(torch.rand(1), expected)
    b = get_params(build_model("mlp", (1, 8, 8), 10, seed=7))
    c = get_params(build_model("mlp", (1, 8, 8), 10, seed=8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="model='vgg'.*allowed.*resnet18"):
        build_model("vgg", (1, 8, 8), 10)
    assert {"mlp", "cnn", "lenet5", "resnet8", "resnet18", "char_lstm"} <= set(MODEL_NAMES)


def test_a_model_whose_module_is_absent_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(models._REGISTRY, "ghost", ("fl.models.ghost", "Ghost", models._shape, {}))
    with pytest.raises(ImportError, match="model='ghost' needs fl.models.ghost.Ghost"):
        build_model("ghost", (1, 8, 8), 10)


def test_too_small_input_for_the_cnn_is_refused():
    with pytest.raises(ValueError, match="input_shape=\\(1, 3, 3\\).*allowed"):
        build_model("cnn", (1, 3, 3), 10)


@pytest.mark.parametrize(
    "name, shape, seed, options, message",
    [
        ("mlp", (1, 8, 8), 0, {"hiden": (32,)}, r"hiden=\(32,\): not an option of model='mlp'; allowed are hidden"),
        ("lenet5", (1, 28, 28), 0, {"width": 2.0}, r"width=2.0: not an option of model='lenet5'; allowed is none"),
        ("resnet8", (3, 32, 32), 0, {"depth": 8},
         r"depth=8: not an option of model='resnet8'; allowed are width, static_bn"),
        ("char_lstm", (1, 8, 8), 0, {}, r"input_shape=\(1, 8, 8\): allowed is \(sequence_length,\)"),
        ("mlp", (1, 8, 8), -2, {}, r"seed=-2: allowed is an integer >= 0"),
        # these built a broken model, or failed deep inside torch
        ("mlp", (1, 8, 8), 0, {"hidden": 5}, r"^hidden=5: allowed is a sequence of integers >= 1$"),
        ("cnn", (1, 28, 28), 0, {"hidden": 0}, r"^hidden=0: allowed is an integer >= 1$"),
        ("resnet8", (3, 32, 32), 0, {"static_bn": "no"}, r"^static_bn='no': allowed is True or False$"),
        ("resnet8", (3, 32, 32), 0, {"width": "0.5"}, r"^width='0.5': allowed is a finite number > 0$"),
        ("char_lstm", (80,), 0, {"hidden": 0}, r"^hidden=0: allowed is an integer >= 1$"),
        ("mlp", (0, 8, 8), 0, {}, r"^input_shape=\(0, 8, 8\): allowed is a non-empty sequence of integers >= 1$"),
    ],
)
def test_options_the_model_does_not_take_and_data_it_cannot_read_are_refused(name, shape, seed, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, shape, 10, seed, **options)


@pytest.mark.parametrize("classes", [0, -3, 2.5, True])
def test_a_number_of_classes_that_is_not_a_whole_number_above_zero_is_refused(classes):
    with pytest.raises(ValueError, match=rf"^num_classes={classes!r}: allowed is an integer >= 1$"):
        build_model("mlp", (1, 8, 8), classes)


def test_seeds_beyond_64_bits_build_and_the_cuda_generators_are_left_alone():
    first = get_params(build_model("mlp", (1, 8, 8), 10, seed=1))
    for seed in (2**32 + 1, 2**70):  # the first used to be seed 1 again (torch keeps 32 bits), the second to fail
        other = get_params(build_model("mlp", (1, 8, 8), 10, seed=seed))
        assert not torch.equal(other["net.1.weight"], first["net.1.weight"])
    state = torch.get_rng_state()
    tracker = torch.cuda._lazy_seed_tracker  # where torch.manual_seed queues a reseed of every CUDA generator
    queued, tracker.manual_seed_all_cb = tracker.manual_seed_all_cb, None
    try:
        build_model("mlp", (1, 8, 8), 10, seed=3)
        assert tracker.manual_seed_all_cb is None
    finally:
        tracker.manual_seed_all_cb = queued
    assert torch.equal(torch.get_rng_state(), state)


def test_the_char_lstm_refuses_floating_point_features():
    """x.long() truncated features to indices: 0.1 and 0.9 read as character 0, and
    training went on without a word."""
    model = build_model("char_lstm", (80,), 96, seed=0)
    with pytest.raises(ValueError, match=r"^x \(torch.float32\): allowed is integer character indices"):
        model(torch.full((2, 80), 0.9))
    assert model(torch.zeros(2, 80, dtype=torch.int32)).shape == (2, 96)
