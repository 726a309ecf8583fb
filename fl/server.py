"""The federated training loop: ``run_federated`` drives a strategy and an executor.

Randomness: one ``seed``; the model's initialisation and each round's stream are
independent children of ``numpy.random.SeedSequence(seed)``, and each client's batch
order is a child of its round's stream keyed by the client id, so the numbers depend
neither on the order in which clients run nor on the executor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fl.algorithms.strategy import Strategy, child_seed
from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import Executor
from fl.executors.serial import SerialExecutor
from fl.models import Params, build_model, get_params

_INIT_KEY, _ROUND_KEY = 0, 1  # spawn keys of the purposes drawn from the run's seed


@dataclass(frozen=True)
class RoundMetrics:
    """One round. train_loss: sample-weighted mean of the clients' mean mini-batch loss
    (nats; NaN when no client trained). test_loss, test_accuracy: the new global model
    on the test set (None when not evaluated). bytes_down / bytes_up: model payloads
    server -> clients and clients -> server (state size in bytes times clients)."""

    round_index: int
    clients: int
    samples: int
    train_loss: float
    test_loss: float | None
    test_accuracy: float | None
    bytes_down: int
    bytes_up: int
    seconds: float


@dataclass(frozen=True)
class FederatedResult:
    """params: the final global model; initial_params: the one training started from;
    model: the architecture (run it on params with ``torch.func.functional_call`` or
    ``fl.evaluation``); history: one :class:`RoundMetrics` per round."""

    model: nn.Module
    params: Params
    initial_params: Params
    history: list[RoundMetrics]


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device`` for "cpu" or "cuda[:i]"; ValueError when CUDA is asked for and absent."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r}: allowed is 'cpu' or 'cuda'") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: allowed is 'cpu' or 'cuda'")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: allowed is 'cpu' here (no CUDA device is available)")
    return resolved


def check_schedule(rounds: int, evaluate_every: int) -> None:
    """ValueError unless ``rounds`` is an integer >= 0 and ``evaluate_every`` one >= 1."""
    for key, value, least in (("rounds", rounds, 0), ("evaluate_every", evaluate_every, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{key}={value!r}: allowed is an integer >= {least}")


def client_subsets(train_subsets: Sequence[Subset] | Mapping[int, Subset]) -> dict[int, Subset]:
    """Client id -> data: a mapping as given, a sequence numbered 0..N-1."""
    return dict(train_subsets) if isinstance(train_subsets, Mapping) else dict(enumerate(train_subsets))


def initial_model(
    model: str | nn.Module,
    subsets: Mapping[int, Subset],
    test: ArrayDataset | None,
    seed: int | np.random.SeedSequence,
    device: str,
    model_options: dict | None,
    init_params: Params | None,
) -> tuple[nn.Module, Params]:
    """The architecture on ``device`` and the starting global model: a name is built with
    ``model_options`` (input shape and classes from the data, initialised from the run
    ``seed``'s init stream); ``init_params`` (default: the model's own weights) are moved
    to ``device``."""
    target = resolve_device(device)
    if isinstance(model, str):
        shape_source = next((d for d in [*(s.dataset for s in subsets.values()), test] if d is not None), None)
        if shape_source is None:
            raise ValueError(f"model={model!r}: allowed is a module when there is neither training data nor a test set")
        model = build_model(
            model, shape_source.feature_shape, shape_source.num_classes, child_seed(seed, _INIT_KEY), **(model_options or {})
        )
    model = model.to(target)
    return model, {k: v.to(target) for k, v in (get_params(model) if init_params is None else init_params).items()}


def round_seed(seed: int | np.random.SeedSequence, round_index: int) -> np.random.SeedSequence:
    """The random stream of round ``round_index`` of a run with ``seed`` (what
    ``Strategy.configure_round`` is given)."""
    return child_seed(seed, _ROUND_KEY, round_index)


def run_federated(
    model: str | nn.Module,
    train_subsets: Sequence[Subset] | Mapping[int, Subset],
    strategy: Strategy,
    rounds: int,
    executor: Executor | None = None,
    seed: int | np.random.SeedSequence = 0,
    test: ArrayDataset | None = None,
    progress: bool = True,
    device: str = "cpu",
    model_options: dict | None = None,
    init_params: Params | None = None,
    evaluate_every: int = 1,
) -> FederatedResult:
    """Train ``rounds`` rounds of ``strategy`` over the clients' data.

    model: a name of ``fl.models.MODEL_NAMES`` (built with ``model_options``, input shape
        and classes taken from the data, initialised from ``seed``) or a module.
    train_subsets: client data, a sequence (client ids 0..N-1) or a mapping id -> Subset;
        clients with no samples never train.
    init_params: the starting global model (default: the model's own initial weights).
    executor: default :class:`~fl.executors.serial.SerialExecutor`.
    test: evaluated with ``strategy.evaluate`` every ``evaluate_every`` rounds and after the last.
    """
    check_schedule(rounds, evaluate_every)
    subsets = client_subsets(train_subsets)
    available = {client: data for client, data in subsets.items() if len(data) > 0}
    model, params = initial_model(model, subsets, test, seed, device, model_options, init_params)
    initial = params
    executor = executor or SerialExecutor()
    payload = sum(t.numel() * t.element_size() for t in params.values())
    history = []
    bar = tqdm(range(rounds), desc=type(strategy).__name__, unit="round", disable=not progress, leave=False)
    for t in bar:
        start = time.perf_counter()
        tasks = strategy.configure_round(t, available, round_seed(seed, t))
        results = executor.run(model, strategy, params, tasks)
        params = strategy.aggregate(params, results)
        samples = sum(r.num_samples for r in results)
        train_loss = sum(r.num_samples * r.train_loss for r in results) / samples if samples else float("nan")
        metrics = {}
        if test is not None and ((t + 1) % evaluate_every == 0 or t == rounds - 1):
            metrics = strategy.evaluate(model, params, test)
            bar.set_postfix(acc=f"{metrics['accuracy']:.3f}")
        history.append(
            RoundMetrics(
                round_index=t,
                clients=len(tasks),
                samples=samples,
                train_loss=train_loss,
                test_loss=metrics.get("loss"),
                test_accuracy=metrics.get("accuracy"),
                bytes_down=payload * len(tasks),
                bytes_up=payload * len(results),
                seconds=time.perf_counter() - start,
            )
        )
    return FederatedResult(model=model, params=params, initial_params=initial, history=history)

