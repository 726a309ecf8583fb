"""Model registry: ``build_model(name, input_shape, num_classes, **options)``.

Every classifier maps inputs of shape (B, *input_shape) to logits of shape
(B, num_classes). Models defined in sibling modules are imported only when asked for,
so a missing optional module breaks only its own names. Each name's adapter turns
(input_shape, num_classes) into its factory's arguments; ``options`` go through as given.

name         factory                       from (input_shape, num_classes)   options (defaults)
-----------  ----------------------------  --------------------------------  -------------------------------
mlp          fl.models.mlp.MLP             input_shape, num_classes          hidden=(64,)
cnn          fl.models.cnn.CNN             input_shape, num_classes          channels=(32, 64), hidden=512, kernel_size=5
small_cnn    fl.models.cnn.CNN             input_shape, num_classes          channels=(16, 32), hidden=64, kernel_size=3
lenet5       fl.models.lenet.LeNet5        in_channels, image_size (square)
resnet8      fl.models.resnet.resnet8      in_channels, num_classes          width=1.0, static_bn=False
resnet18     fl.models.resnet.resnet18     in_channels, num_classes          width=1.0, static_bn=False
char_lstm    fl.models.lstm.CharLSTM       vocab_size = num_classes          embed_dim=8, hidden=256, layers=2

Image sizes refused by ``build_model``: lenet5 below 5x5; resnet8 and resnet18 where
neither side exceeds 4 and 8 respectively (their last maps would be 1x1).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fl.checks import check_integer, check_options, check_seed, check_widths

Params = dict[str, torch.Tensor]
"""A model's state (parameters and buffers) by ``state_dict`` name; the currency of ``fl``."""


class UnsuitableData(ValueError):
    """A model's refusal of the data's input shape: ``reason`` ("input_shape=...: allowed is
    ..."), and ``model``, the name :func:`build_model` was given (None where a model's class,
    or a registry adapter, refused it before build_model named it)."""

    def __init__(self, reason: str, model: str | None = None):
        super().__init__(reason if model is None else f"model={model!r} with {reason}")
        self.reason, self.model = reason, model


def _shape(input_shape: tuple, num_classes: int) -> dict:
    return {"input_shape": input_shape, "num_classes": num_classes}


def _image(input_shape: tuple, num_classes: int) -> dict:
    if len(input_shape) != 3:
        raise UnsuitableData(f"input_shape={input_shape!r}: allowed is (channels, height, width)")
    return {"in_channels": input_shape[0], "num_classes": num_classes}


def _square_image(input_shape: tuple, num_classes: int) -> dict:
    arguments = _image(input_shape, num_classes)
    if input_shape[1] != input_shape[2]:
        raise UnsuitableData(f"input_shape={input_shape!r}: allowed is a square image")
    if input_shape[1] < 5:  # LeNet5's own check, naming the key the caller gave (not image_size)
        raise UnsuitableData(f"input_shape={input_shape!r}: allowed is an image of at least 5x5")
    return {**arguments, "image_size": input_shape[1]}


def _downsampled_image(halvings: int) -> Callable[[tuple, int], dict]:
    """The adapter of a model whose ``halvings`` stride-2 stages (3x3, padding 1)
    take a side s to ceil(s / 2**halvings): it asks for an image with a side > 2**halvings,
    so that the last maps hold more than one value per channel. On 1x1 maps batch norm in
    train mode cannot normalise a mini-batch of one sample (a pass's last mini-batch holds
    n mod B samples), and training would stop there."""
    least = 2**halvings + 1

    def adapter(input_shape: tuple, num_classes: int) -> dict:
        arguments = _image(input_shape, num_classes)
        if max(input_shape[1:]) < least:
            raise UnsuitableData(
                f"input_shape={input_shape!r}: allowed is an image of height or width at least "
                f"{least} (its {halvings} stride-2 stages leave 1x1 maps on smaller ones, where batch norm cannot "
                "train on a mini-batch of one sample)"
            )
        return arguments

    return adapter


def _vocabulary(input_shape: tuple, num_classes: int) -> dict:
    if len(input_shape) != 1:
        raise UnsuitableData(f"input_shape={input_shape!r}: allowed is (sequence_length,), character codes")
    return {"vocab_size": num_classes}


# name -> (module, factory, adapter of (input_shape, num_classes), default options)
_REGISTRY: dict[str, tuple[str, str, Callable[[tuple, int], dict], dict]] = {
    "mlp": ("fl.models.mlp", "MLP", _shape, {}),
    "cnn": ("fl.models.cnn", "CNN", _shape, {}),
    "small_cnn": ("fl.models.cnn", "CNN", _shape, {"channels": (16, 32), "hidden": 64, "kernel_size": 3}),
    "lenet5": ("fl.models.lenet", "LeNet5", _square_image, {}),
    "resnet8": ("fl.models.resnet", "resnet8", _downsampled_image(2), {}),
    "resnet18": ("fl.models.resnet", "resnet18", _downsampled_image(3), {}),
    "char_lstm": ("fl.models.lstm", "CharLSTM", _vocabulary, {}),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int | np.random.SeedSequence | None = None,
    **options,
) -> nn.Module:
    """A freshly initialised model (torch's default initialisation). With ``seed`` the
    initialisation is drawn from that seed alone, leaving torch's global RNG untouched;
    without, from torch's global RNG."""
    if not isinstance(name, str) or name not in _REGISTRY:  # a list was "unhashable type"
        raise ValueError(f"model={name!r}: allowed is one of {', '.join(MODEL_NAMES)}")
    module_name, attribute, adapter, defaults = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise ImportError(
            f"model={name!r} needs {module_name}.{attribute}, and {module_name} is not present"
        ) from error
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ImportError(f"model={name!r} needs {module_name}.{attribute}, which {module_name} does not define")
    check_integer("num_classes", num_classes)
    try:
        shape = check_widths("input_shape", input_shape, least_count=1)
    except ValueError as error:
        raise UnsuitableData(str(error), name) from None
    try:
        from_data = adapter(shape, num_classes)
        check_options(f"model={name!r}", options,
                      [key for key in inspect.signature(factory).parameters if key not in from_data])
        arguments = {**from_data, **defaults, **options}
        if seed is None:
            return factory(**arguments)
        check_seed(seed)
        if not isinstance(seed, np.random.SeedSequence) and seed >= 2**32:  # torch's CPU generator keeps 32 bits
            seed = np.random.SeedSequence(seed)
        if isinstance(seed, np.random.SeedSequence):
            seed = int(seed.generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))  # the CPU generator alone: CUDA's is left as it is
            return factory(**arguments)
    except UnsuitableData as error:  # the adapter's refusal, or the model's own (the CNN's, against its poolings)
        raise UnsuitableData(error.reason, name) from None


def get_params(model: nn.Module) -> Params:
    """The model's state (parameters and buffers) as a dict of detached copies, usable
    with ``torch.func.functional_call(model, params, (x,))``."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def batch_statistics_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of each batch norm layer of ``model`` that keeps no running statistics
    (``track_running_stats=False``, e.g. ``static_bn=True`` of the ResNets). Such a layer
    normalises with the mean and variance of the batch it is given, in eval mode too, so
    a sample's output depends on the other samples of its batch."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None]


def check_params(key: str, params, model: nn.Module, finite: bool = False) -> None:
    """ValueError unless ``params`` is a mapping with the keys of ``model``'s state
    (parameters and buffers, as ``fl.models.get_params`` gives them), each a tensor of
    the shape and dtype of the model's own (what the executors load into it); with
    ``finite``, of finite entries too (a starting model holding NaN was reported as local
    training that diverged, "allowed is a step size small enough", which no step size mends)."""
    state = model.state_dict()
    if not isinstance(params, Mapping):
        raise ValueError(f"{key} (of type {type(params).__name__}): allowed is a mapping name -> tensor, "
                         "e.g. fl.models.get_params(model)")
    missing, unknown = [k for k in state if k not in params], [k for k in params if k not in state]
    if missing or unknown:
        found = ", ".join(f"{what} keys {keys[:3]}" for what, keys in (("missing", missing), ("unknown", unknown))
                          if keys)
        raise ValueError(f"{key} ({found}): allowed is the keys of the model's state, "
                         f"{list(state)[:6]}{' ...' if len(state) > 6 else ''}")
    for name, own in state.items():
        given = params[name]
        if not isinstance(given, torch.Tensor):
            raise ValueError(f"{key}[{name!r}] (of type {type(given).__name__}): allowed is a tensor of "
                             f"shape {tuple(own.shape)}, {own.dtype}, as the model's own")
        if given.shape != own.shape or given.dtype != own.dtype:
            raise ValueError(f"{key}[{name!r}] (shape {tuple(given.shape)}, {given.dtype}): allowed is shape "
                             f"{tuple(own.shape)}, {own.dtype}, as the model's own")
        if finite and given.is_floating_point():
            flat = given.detach().reshape(-1)
            wrong = flat[~torch.isfinite(flat)]
            if wrong.numel():
                raise ValueError(f"{key}[{name!r}] holds {wrong[0].item()!r}: allowed is finite weights")
