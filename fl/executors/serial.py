"""The reference executor: clients one after another, on the template model's own tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fl.executors.base import ClientResult, ClientTask, Executor
from fl.models import Params


class SerialExecutor(Executor):
    """Loads the global model into ``model`` for each task and runs plain mini-batch SGD
    with autograd, ``w <- w - lr * grad``, on the device of ``global_params`` (with
    gradients enabled, also when called inside ``torch.no_grad()``). Overhead over a
    hand-written training loop: one parameter copy in and one out per client."""

    @torch.enable_grad()
    def run(self, model: nn.Module, strategy, global_params: Params, tasks: list[ClientTask]) -> list[ClientResult]:
        state = model.state_dict(keep_vars=True)
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
            for batch in task.batches():
                index = torch.from_numpy(batch).to(device)
                loss = F.cross_entropy(model(x[index]), y[index])
                objective = strategy.local_objective(loss, trainable, global_params, task.state)
                grads = torch.autograd.grad(objective, weights)
                with torch.no_grad():
                    for weight, grad in zip(weights, grads):
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
