"""The vectorised executor: many clients of one architecture trained at once with ``torch.func``.

C clients' trainable parameters are stacked along a new leading axis, W of shape
(C, *w.shape) for every parameter w, and one functional SGD step is mapped over that axis:

    g_c, l_c = grad(objective)(W_c, x_c, y_c, a_c, state_c)            for c = 1..C (vmap)
    W_c     <- W_c - lr_{s,c} * g_c

    objective(W_c) = strategy.local_objective(l_c, W_c, global_params, state_c)
    l_c            = sum_b a_{c,b} * CE(f(W_c; x_{c,b}), y_{c,b})

x_c, y_c are client c's mini-batch at step s, padded to the largest batch B of the
chunk; the per-sample weights a_{c,b} are 1/n_{s,c} on the n_{s,c} real samples and 0 on
the padding, so l_c is exactly the mean cross-entropy of the real batch and padding
adds nothing to the gradient. A client that has taken all its steps while others go on
gets lr_{s,c} = 0 (and an all-zero weight row), which leaves its parameters unchanged.
Batches come from each task's own ``ClientTask.batches()``, so the numbers equal the
serial executor's up to float rounding, whatever the chunking.

Under ``vmap`` a linear layer becomes one batched matmul (C, B, d_in) @ (C, d_in, d_out)
and a convolution one grouped convolution: the C clients' inputs are concatenated along
channels, (B, C * c_in, H, W), and their filters form groups=C, (C * c_out, c_in, k, k);
so each step is a few large kernels instead of C small training loops.

Clients are trained in chunks of at most ``chunk_size``, longest schedules first (so
that few clients idle while others finish); memory is bounded by one chunk: its stacked
parameters and gradients, its batches' activations, and the samples its clients use.
Everything lives on the device of ``global_params`` (CPU or CUDA, the same code).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from fl.executors.base import ClientResult, ClientTask, Executor
from fl.executors.stacked import compile_layers
from fl.models import Params


class VectorisedExecutor(Executor):
    """Trains ``chunk_size`` clients at a time as one vmapped functional SGD step.

    Supports models whose state is parameters only (no buffers such as BatchNorm's
    running statistics) and whose forward is deterministic (no dropout). A task's
    ``state`` must be a (possibly nested) dict of tensors with the same structure and
    shapes for every task, or empty. Result tensors are views of the chunk's stacked
    parameters (no copy per client); frozen parameters are ``global_params``' own tensors.
    """

    def __init__(self, chunk_size: int = 32):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r}: allowed is an integer >= 1")
        self.chunk_size = int(chunk_size)

    def run(self, model: nn.Module, strategy, global_params: Params, tasks: list[ClientTask]) -> list[ClientResult]:
        buffers = [name for name, _ in model.named_buffers()]
        if buffers:
            raise ValueError(
                f"model with buffers {buffers}: allowed is a model without buffers for VectorisedExecutor "
                "(use SerialExecutor)"
            )
        schedules = [list(task.batches()) for task in tasks]
        by_dataset: dict[int, list[int]] = {}
        for i, task in enumerate(tasks):
            by_dataset.setdefault(id(task.data.dataset), []).append(i)
        results: list[ClientResult | None] = [None] * len(tasks)
        for members in by_dataset.values():
            members.sort(key=lambda i: -len(schedules[i]))
            for start in range(0, len(members), self.chunk_size):
                chunk = members[start : start + self.chunk_size]
                trained = _train_chunk(
                    model, strategy, global_params, [tasks[i] for i in chunk], [schedules[i] for i in chunk]
                )
                for i, result in zip(chunk, trained):
                    results[i] = result
        return results


def _train_chunk(
    model: nn.Module, strategy, global_params: Params, tasks: list[ClientTask], schedules: list[list[np.ndarray]]
) -> list[ClientResult]:
    """Train the C clients of ``tasks`` together (see the module docstring)."""
    device = next(iter(global_params.values())).device
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    dataset = tasks[0].data.dataset
    rows, weight, lr = _schedule(schedules, [task.data.indices for task in tasks], [task.lr for task in tasks], device)
    steps = torch.tensor([len(s) for s in schedules], device=device)
    stacked = {name: global_params[name].expand(len(tasks), *global_params[name].shape).clone() for name in trainable}
    state = _stack_states([task.state for task in tasks])
    layers = compile_layers(model, stacked) if len(trainable) == len(global_params) else None
    if layers is None:
        step = _functional_step(model, strategy, global_params, stacked, state)
    else:
        step = _layer_step(layers, strategy, global_params, stacked, state, _reads_params(strategy, global_params, tasks[0].state))
    losses = torch.zeros(len(tasks), device=device)
    was_training = model.training
    model.train()
    try:
        for s in range(rows.shape[0]):
            loss = step(dataset.x[rows[s]].to(device), dataset.y[rows[s]].to(device), weight[s], lr[s])
            losses += torch.where(s < steps, loss, 0.0)
    finally:
        model.train(was_training)
    mean_loss = (losses / steps.clamp(min=1)).masked_fill(steps == 0, float("nan")).tolist()
    return [
        ClientResult(
            client_id=task.client_id,
            params={name: stacked[name][c] if name in stacked else value for name, value in global_params.items()},
            num_samples=len(task.data),
            train_loss=mean_loss[c],
            steps=len(schedules[c]),
        )
        for c, task in enumerate(tasks)
    ]


def _functional_step(model: nn.Module, strategy, global_params: Params, stacked: Params, state: dict):
    """Any model: one SGD step of every client as ``vmap(grad(objective))`` over the stacked
    parameters (convolutions become grouped convolutions, linear layers batched matmuls).
    The step maps a batch x (C, B, ...), y (C, B), weights a (C, B) and step sizes lr
    (C,) to the clients' losses (C,), updating ``stacked`` in place."""
    fixed = {name: value for name, value in global_params.items() if name not in stacked}

    def objective(params, x_c, y_c, a_c, state_c):
        ce = F.cross_entropy(functional_call(model, {**fixed, **params}, (x_c,)), y_c, reduction="none")
        loss = torch.sum(a_c * ce)
        return strategy.local_objective(loss, params, global_params, state_c), loss

    gradient = vmap(grad(objective, has_aux=True))

    def step(x, y, a, lr):
        grads, loss = gradient(stacked, x, y, a, state)
        for name, w in stacked.items():
            w.addcmul_(grads[name], lr.view(-1, *[1] * (w.dim() - 1)), value=-1.0)
        return loss

    return step


def _layer_step(layers: list, strategy, global_params: Params, stacked: Params, state: dict, reads_params: bool):
    """A chain of supported layers (``fl.executors.stacked``): forward and backward by
    hand, each layer updating its parameters as the gradient passes. The objective
    J_c = local_objective(l_c, W_c) enters by the chain rule,

        dJ_c/dW_c = (dJ_c/dl_c) * dl_c/dW_c + (partial J_c / partial W_c),

    both factors from ``vmap(grad(local_objective))`` at the step's loss and the
    parameters before the step (the partial term only if the objective reads them).
    dl_c/dz for the logits z is a_c,b (softmax(z_c,b) - onehot(y_c,b)). Same step
    signature as :func:`_functional_step`."""

    def objective(loss, params, state_c):
        return strategy.local_objective(loss, params, global_params, state_c)

    derivative = vmap(grad(objective, argnums=(0, 1) if reads_params else 0))
    first = next(i for i, layer in enumerate(layers) if layer.params)  # backward stops at its input

    def step(x, y, a, lr):
        h = x
        for layer in layers:
            h = layer.forward(h)
        log_p = torch.log_softmax(h, dim=-1)
        loss = -torch.sum(a * log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1), dim=1)
        dloss, dparams = derivative(loss, stacked, state) if reads_params else (derivative(loss, stacked, state), {})
        g = log_p.exp_().scatter_add_(-1, y.unsqueeze(-1), torch.full_like(log_p[..., :1], -1.0))
        g.mul_((a * dloss.unsqueeze(1)).unsqueeze(-1))
        for i in reversed(range(first, len(layers))):
            g = layers[i].backward(g, lr, need_input_grad=i > first)
        for name, d in dparams.items():
            stacked[name].addcmul_(d, lr.view(-1, *[1] * (d.dim() - 1)), value=-1.0)
        return loss

    return step


def _reads_params(strategy, global_params: Params, state: dict) -> bool:
    """Whether the strategy's objective depends on the parameters (FedProx's proximal
    term) or on the loss alone (FedAvg), judged by autograd on the global model."""
    params = {name: value.detach().requires_grad_() for name, value in global_params.items()}
    loss = torch.zeros((), device=next(iter(params.values())).device, requires_grad=True)
    objective = strategy.local_objective(loss, params, global_params, state)
    return any(g is not None for g in torch.autograd.grad(objective, list(params.values()), allow_unused=True))


def _schedule(
    schedules: list[list[np.ndarray]], indices: list[np.ndarray], lrs: list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk's steps as padded arrays, S = the most steps of any client, B = the
    largest batch: rows (S, C, B), on the CPU, the dataset rows of each batch (padding
    repeats the client's first sample); on ``device``, weight (S, C, B), 1/n_{s,c} on
    the n_{s,c} real samples and 0 on padding, and lr (S, C), the client's step size
    while it has steps left and 0 after."""
    num_steps = max((len(s) for s in schedules), default=0)
    width = max((len(b) for s in schedules for b in s), default=0)
    rows = np.zeros((num_steps, len(schedules), width), dtype=np.int64)
    weight = np.zeros((num_steps, len(schedules), width), dtype=np.float32)
    lr = np.zeros((num_steps, len(schedules)), dtype=np.float32)
    for c, (batches, own) in enumerate(zip(schedules, indices)):
        rows[:, c, :] = own[0]
        for s, batch in enumerate(batches):
            rows[s, c, : len(batch)] = own[batch]
            weight[s, c, : len(batch)] = np.float32(1.0) / np.float32(len(batch))
        lr[: len(batches), c] = lrs[c]
    return torch.from_numpy(rows), torch.from_numpy(weight).to(device), torch.from_numpy(lr).to(device)


def _stack_states(states: list[dict]) -> dict:
    """The tasks' states stacked leaf by leaf along a new leading client axis."""
    flat = [tree_flatten(state) for state in states]
    spec = flat[0][1]
    if any(other != spec for _, other in flat) or not all(isinstance(leaf, torch.Tensor) for leaves, _ in flat for leaf in leaves):
        raise ValueError("task state: allowed is the same structure of tensors for every task of a round")
    return tree_unflatten([torch.stack(leaves) for leaves in zip(*(leaves for leaves, _ in flat))], spec)
