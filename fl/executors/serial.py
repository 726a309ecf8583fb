"""The reference executor: clients one after another, on the template model's own tensors."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl.executors.base import ClientResult, ClientTask, Executor
from fl.models import Params, check_params

# The child of a task's seed that seeds torch's generators (its batch order draws from the seed itself).
TORCH_STREAM = 0


class SerialExecutor(Executor):
    """Loads the global model into ``model`` for each task and runs plain mini-batch SGD
    with autograd, ``w <- w - lr * grad``, on the device of ``global_params`` (with
    gradients enabled, also when called inside ``torch.no_grad()``). Overhead over a
    hand-written training loop: one parameter copy in and one out per client. A trainable
    parameter that the objective does not read (an unused layer; with FedAvg's objective,
    the loss itself) has gradient zero and is left as it is, as by the vectorised executor.

    Random numbers the model draws while it trains (dropout) come from torch's CPU
    generator, and on CUDA the device's, seeded for each task from its own stream, the
    child ``TORCH_STREAM`` of ``task.seed``, and given back to the caller's state after the
    task: a client's model depends neither on the order of the tasks nor on what drew from
    torch's generators before. ``global_params`` may be the template's own tensors (e.g.
    ``model.state_dict()``): they are then copied first, so that every task starts from them,
    not from the model the task before it trained."""

    @torch.enable_grad()
    def run(self, model: nn.Module, strategy, global_params: Params, tasks: list[ClientTask]) -> list[ClientResult]:
        check_params("global_params", global_params, model)
        state = model.state_dict(keep_vars=True)
        if _shares_memory(global_params, state):
            global_params = {name: tensor.detach().clone() for name, tensor in global_params.items()}
        buffers = frozenset(name for name, _ in model.named_buffers(remove_duplicate=False) if name in state)
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        weights = list(trainable.values())
        device = next(iter(global_params.values())).device
        model.train()
        results = []
        for task in tasks:
            with torch.no_grad():
                for name, tensor in state.items():
                    tensor.copy_(global_params[name])
            x, y = (t.to(device) for t in task.data.tensors())
            losses = []
            with _seeded_generators(task.seed, device):
                for batch in task.batches():
                    index = torch.from_numpy(batch).to(device)
                    loss = F.cross_entropy(_forward(model, x[index], task), y[index])
                    objective = strategy.local_objective(loss, trainable, global_params, task.state)
                    grads = torch.autograd.grad(objective, weights, allow_unused=True)
                    with torch.no_grad():
                        for weight, grad in zip(weights, grads):
                            if grad is not None:  # None: the objective does not read it, a zero gradient
                                weight.add_(grad, alpha=-task.lr)
                    losses.append(loss.detach())
            results.append(
                ClientResult(
                    client_id=task.client_id,
                    params={name: tensor.detach().clone() for name, tensor in state.items()},
                    num_samples=len(task.data),
                    train_loss=torch.stack(losses).mean().item() if losses else float("nan"),
                    steps=len(losses),
                    buffers=buffers,
                )
            )
        return results


def _forward(model: nn.Module, x: torch.Tensor, task: ClientTask) -> torch.Tensor:
    """``model(x)`` on a mini-batch of ``task``; a ValueError naming the client, its samples
    and the batch size where a batch norm layer in training mode refuses a mini-batch of one
    sample (torch's own message named none of them)."""
    try:
        return model(x)
    except ValueError as error:
        if len(x) != 1 or "more than 1 value per channel" not in str(error):
            raise
        n, size = len(task.data), task.batch_size
        raise ValueError(f"batch_size={size}: client {task.client_id} has {n} sample(s), so a pass over them ends in "
                         "a mini-batch of one sample, which a batch norm layer in training mode cannot normalise "
                         f"({error}); allowed is a batch size > 1 that does not leave one sample over (n mod "
                         "batch_size != 1), a client of more samples, or a model whose batch norm sees more than "
                         "one value per channel") from None


def _shares_memory(params: Params, state: dict[str, torch.Tensor]) -> bool:
    """Whether a tensor of ``params`` lies in the storage of one of ``state``'s (is it, or a view of it)."""
    own = {tensor.untyped_storage().data_ptr() for tensor in state.values()}
    return any(tensor.untyped_storage().data_ptr() in own for tensor in params.values())


@contextlib.contextmanager
def _seeded_generators(seed: int | np.random.SeedSequence, device: torch.device) -> Iterator[None]:
    """Inside the block, torch's CPU generator, and ``device``'s when it is a CUDA device,
    seeded from ``seed``'s child ``TORCH_STREAM``; after it, both back in the state they had."""
    from fl.algorithms.strategy import child_seed  # here: fl.algorithms imports this module

    value = int(child_seed(seed, TORCH_STREAM).generate_state(1)[0])
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(value)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(value)
        yield
