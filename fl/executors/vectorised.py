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
        order = sorted(range(len(tasks)), key=lambda i: -len(schedules[i]))
        results: list[ClientResult | None] = [None] * len(tasks)
        for start in range(0, len(order), self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            trained = _train_chunk(model, strategy, global_params, [tasks[i] for i in chunk], [schedules[i] for i in chunk])
            for i, result in zip(chunk, trained):
                results[i] = result
        return results


def _train_chunk(
    model: nn.Module, strategy, global_params: Params, tasks: list[ClientTask], schedules: list[list[np.ndarray]]
) -> list[ClientResult]:
    """Train the C clients of ``tasks`` together (see the module docstring)."""
    device = next(iter(global_params.values())).device
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    fixed = {name: value for name, value in global_params.items() if name not in trainable}
    x, y, positions = _gather(tasks, device)
    index, weight, lr = _schedule(schedules, positions, [task.lr for task in tasks], device)
    steps = torch.tensor([len(s) for s in schedules], device=device)
    stacked = {name: global_params[name].expand(len(tasks), *global_params[name].shape).clone() for name in trainable}
    state = _stack_states([task.state for task in tasks])

    def objective(params, x_c, y_c, weight_c, state_c):
        ce = F.cross_entropy(functional_call(model, {**fixed, **params}, (x_c,)), y_c, reduction="none")
        loss = torch.sum(weight_c * ce)
        return strategy.local_objective(loss, params, global_params, state_c), loss

    step = vmap(grad(objective, has_aux=True))
    was_training = model.training
    model.train()
    losses = torch.zeros(len(tasks), device=device)
    try:
        for s in range(index.shape[0]):
            grads, loss = step(stacked, x[index[s]], y[index[s]], weight[s], state)
            for name, w in stacked.items():
                w.addcmul_(grads[name], lr[s].view(-1, *[1] * (w.dim() - 1)), value=-1.0)
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


def _gather(tasks: list[ClientTask], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """The samples the tasks use, gathered once: x of shape (n, *feature_shape) and y (n,)
    on ``device``, and for each task the rows of x holding its ``data[0..len-1]``.

    Tasks viewing the same dataset share its rows (n is at most the union of their
    indices), so overlapping draws from one pool cost no more than the pool."""
    by_dataset: dict[int, list[int]] = {}
    for i, task in enumerate(tasks):
        by_dataset.setdefault(id(task.data.dataset), []).append(i)
    xs, ys, positions, offset = [], [], [None] * len(tasks), 0
    for members in by_dataset.values():
        dataset = tasks[members[0]].data.dataset
        used, inverse = np.unique(np.concatenate([tasks[i].data.indices for i in members]), return_inverse=True)
        rows = torch.from_numpy(used)
        xs.append(dataset.x[rows])
        ys.append(dataset.y[rows])
        bounds = np.cumsum([0] + [len(tasks[i].data) for i in members])
        for i, lo, hi in zip(members, bounds[:-1], bounds[1:]):
            positions[i] = offset + inverse[lo:hi]
        offset += len(used)
    return torch.cat(xs).to(device), torch.cat(ys).to(device), positions


def _schedule(
    schedules: list[list[np.ndarray]], positions: list[np.ndarray], lrs: list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk's steps as padded arrays, S = the most steps of any client, B = the
    largest batch: index (S, C, B) rows of the gathered x; weight (S, C, B), 1/n_{s,c}
    on real samples and 0 on padding (padding repeats row 0 of the client); lr (S, C),
    the client's step size while it has steps left and 0 after."""
    num_steps = max((len(s) for s in schedules), default=0)
    width = max((len(b) for s in schedules for b in s), default=0)
    index = np.zeros((num_steps, len(schedules), width), dtype=np.int64)
    weight = np.zeros((num_steps, len(schedules), width), dtype=np.float32)
    lr = np.zeros((num_steps, len(schedules)), dtype=np.float32)
    for c, (batches, rows) in enumerate(zip(schedules, positions)):
        index[:, c, :] = rows[0]
        for s, batch in enumerate(batches):
            index[s, c, : len(batch)] = rows[batch]
            weight[s, c, : len(batch)] = np.float32(1.0) / np.float32(len(batch))
        lr[: len(batches), c] = lrs[c]
    return tuple(torch.from_numpy(a).to(device) for a in (index, weight, lr))


def _stack_states(states: list[dict]) -> dict:
    """The tasks' states stacked leaf by leaf along a new leading client axis."""
    flat = [tree_flatten(state) for state in states]
    spec = flat[0][1]
    if any(other != spec for _, other in flat) or not all(isinstance(leaf, torch.Tensor) for leaves, _ in flat for leaf in leaves):
        raise ValueError("task state: allowed is the same structure of tensors for every task of a round")
    return tree_unflatten([torch.stack(leaves) for leaves in zip(*(leaves for leaves, _ in flat))], spec)
