"""The vectorised executor: many clients of one architecture trained at once.

C clients' trainable parameters are stacked along a new leading axis, W of shape
(C, *w.shape) for every parameter w, and one SGD step is taken for all of them together:

    W_c <- W_c - lr_{s,c} * dJ_c/dW_c                                  c = 1..C
    J_c  = strategy.local_objective(l_c, W_c, global_params, state_c)
    l_c  = sum_b a_{s,c,b} CE(f(W_c; x_{s,c,b}), y_{s,c,b})

x_{s,c} is client c's mini-batch at step s (from its own ``ClientTask.batches()``),
padded to the chunk's largest batch B. The per-sample weights a are 1/n_{s,c} on the
n_{s,c} real samples and 0 on the padding, so l_c is exactly the mean cross-entropy
of the real batch and padding adds nothing to the gradient. A client that has taken
all its steps while others go on gets lr_{s,c} = 0, which leaves it unchanged. So a
step from the same parameters gives the serial executor's numbers up to float rounding,
whatever the chunking. Over many steps and rounds the rounding can grow where the model
is not smooth: a ReLU (or a max pooling window) whose inputs nearly tie may route the
gradient differently in the two executors, so trained models agree closely, not to
float rounding (see ``fl.executors`` for figures).

Two ways to compute dJ_c/dW_c, chosen per model:

* layers (``fl.executors.stacked``): models that are a chain of Linear, Conv2d, ReLU,
  MaxPool2d and Flatten (the MLP and CNN of ``fl.models``). Forward and backward are
  written out: linear layers as batched matmuls over the clients, with the SGD update
  folded into the backward matmul; convolutions client by client on a CPU, as one
  grouped convolution on CUDA (``grouped_convolutions``). The objective
  enters by the chain rule, dJ/dW = (dJ/dl) dl/dW + partial J/partial W, both factors
  from ``vmap(grad(local_objective))``.
* functional: any other model, as ``vmap(grad(objective))`` over the stacked
  parameters with ``functional_call`` (a convolution becomes a grouped convolution,
  a linear layer a batched matmul).

Clients are trained in chunks of at most ``chunk_size``, longest schedules first (so
few clients idle while others finish): as many chunks as that takes (when chunks run
concurrently, rounded up to a multiple of ``workers``), their sizes differing by at
most one. Beyond the results (one parameter set per client, as from any executor)
memory is bounded by one chunk per worker: its stacked parameters and one step's
batches and activations; clients' data stay index views of their dataset, gathered
one batch at a time (off the CPU, a chunk's samples are copied to the device once).
Everything runs on the device of ``global_params`` (CPU or CUDA, the same code).

With ``workers`` > 1 (CPU, layers path), that many threads train chunks at once, the
torch threads split among them (one each on a 2-core machine): parallelism across
clients instead of inside each small per-client operation. A convolution on one
client's mini-batch of 10 gains little from a second thread; two clients on one
thread each gain almost twice (``benchmarks/bench_executors.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_unflatten

from fl.executors.base import ClientResult, ClientTask, Executor, UnsupportedModel
from fl.checks import check_integer
from fl.executors.stacked import compile_layers, layer_chain
from fl.models import Params, batch_statistics_layers, check_params

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""One SGD step of a chunk: (x (C, B, ...), y (C, B), a (C, B), lr (C,)) -> losses l (C,),
updating the chunk's stacked parameters in place."""


class VectorisedExecutor(Executor):
    """Trains up to ``chunk_size`` clients at a time as one stacked SGD step.

    chunk_size: clients per chunk; default: as many as keep the chunk's stacked
    trainable parameters under ``max_chunk_bytes`` (at least 1, at most 64).
    max_chunk_bytes: default 16 MiB on a CPU, about a last-level cache, so that the
    stacked weights stay in cache from step to step (larger chunks measured slower
    there: the small per-client matmuls are memory-bound); 1 GiB on CUDA.

    workers: threads training chunks concurrently (default 1). Used on a CPU for models
    on the layers path; others train their chunks one after another (``functional_call``
    swaps the shared module's parameters, so two threads cannot share it), and their
    chunks are not multiplied for workers that do not run. While they
    run, torch's thread count is ``torch.get_num_threads() // workers`` (at least 1),
    process-wide (torch has one setting), and restored afterwards.

    grouped_convolutions: the clients' convolutions on the layers path as one grouped
    convolution (True) or one client at a time (False); default: grouped on CUDA, where
    it measured faster, one at a time on a CPU (``fl.executors.stacked.Conv2d``).

    Supports models whose state is parameters only (no buffers such as BatchNorm's
    running statistics), each a tensor of its own (no tied weights), whose layers treat
    each sample alone (no batch norm, even without running statistics: padding rows would
    enter its batch statistics) and whose forward is deterministic (no dropout);
    :meth:`check_model` refuses others, and :meth:`run` a forward that draws random numbers
    without a dropout layer (e.g. ``F.dropout``), at its first step. Both with
    :class:`UnsupportedModel`. A task's ``state`` must be empty or a (possibly nested) dict
    of tensors of the same structure and shapes for every task. Result tensors are views
    into their chunk's stacked parameters (no copy per client); frozen parameters are
    ``global_params``' own tensors. Training runs with gradients enabled, also when called
    inside ``torch.no_grad()``.
    """

    def __init__(self, chunk_size: int | None = None, max_chunk_bytes: int | None = None, workers: int = 1,
                 grouped_convolutions: bool | None = None):
        check_integer("chunk_size", chunk_size, optional=True)
        check_integer("max_chunk_bytes", max_chunk_bytes, optional=True)
        check_integer("workers", workers)
        if grouped_convolutions is not None and not isinstance(grouped_convolutions, bool):
            raise ValueError(f"grouped_convolutions={grouped_convolutions!r}: allowed is None (on CUDA), True or False")
        self.chunk_size, self.max_chunk_bytes, self.workers = chunk_size, max_chunk_bytes, int(workers)
        self.grouped_convolutions = grouped_convolutions

    def check_model(self, model: nn.Module) -> None:
        """:class:`UnsupportedModel` for buffers, for tied weights (one parameter under two
        names, e.g. a layer used twice: the clients' stacked copies would be two), for a
        layer whose output mixes the samples of a batch (batch norm, even without running
        statistics: the padding would enter its batch statistics), and for a random one
        (dropout)."""
        buffers = [name for name, _ in model.named_buffers()]
        if buffers:
            more = f" and {len(buffers) - 1} more" if len(buffers) > 1 else ""
            raise UnsupportedModel(
                f"the model has buffers ({buffers[0]}{more}, such as batch norm's running statistics); allowed "
                "with the vectorised executor is a model without buffers (train this one with the serial executor)"
            )
        names: dict[int, list[str]] = {}
        for name, parameter in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(parameter), []).append(name)
        tied = next((group for group in names.values() if len(group) > 1), None)
        if tied is not None:
            raise UnsupportedModel(
                f"the model ties weights ({' and '.join(tied)} are one parameter); allowed with the vectorised "
                "executor is a model whose parameters are distinct tensors (train this one with the serial executor)"
            )
        # batch norm with running statistics has buffers, refused above
        dropout = [(name, module) for name, module in model.named_modules()
                   if isinstance(module, nn.modules.dropout._DropoutNd)]
        refused = batch_statistics_layers(model) + dropout
        if refused:
            name, module = refused[0]
            raise UnsupportedModel(
                f"the model has a {type(module).__name__} layer ({name}); allowed with the vectorised executor "
                "are layers that treat each sample alone and deterministically, no batch norm or dropout "
                "(train this one with the serial executor)"
            )

    def run(self, model: nn.Module, strategy, global_params: Params, tasks: list[ClientTask]) -> list[ClientResult]:
        self.check_model(model)
        check_params("global_params", global_params, model)
        if not tasks:
            return []
        _check_states(tasks)
        device = next(iter(global_params.values())).device
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        size = self.chunk_size
        if size is None:
            budget = self.max_chunk_bytes or (2**30 if device.type == "cuda" else 16 * 2**20)
            per_client = sum(global_params[name].numel() * global_params[name].element_size() for name in trainable)
            size = max(1, min(64, budget // max(per_client, 1)))
        chain = layer_chain(model) if len(trainable) == len(global_params) else None
        probe = _probe(strategy, global_params, tasks[0].state) if chain is not None else None
        workers = self.workers if chain is not None and device.type == "cpu" else 1  # threads run layers on CPU only
        schedules = [list(task.batches()) for task in tasks]
        chunks = _chunks(tasks, schedules, size, workers)

        def make_step(stacked: Params, state: dict) -> Step:
            if chain is None:
                return _functional_step(model, strategy, global_params, stacked, state)
            layers = compile_layers(chain, stacked, self.grouped_convolutions)
            return _layer_step(layers, strategy, global_params, stacked, state, *probe)

        def train(chunk: list[int]) -> list[ClientResult]:
            chunk_tasks, chunk_schedules = [tasks[i] for i in chunk], [schedules[i] for i in chunk]
            return _train_chunk(global_params, trainable, chunk_tasks, chunk_schedules, make_step)

        was_training = model.training
        model.train()
        try:
            if workers > 1 and len(chunks) > 1:
                trained = _concurrently(train, chunks, workers)
            else:
                trained = [train(chunk) for chunk in chunks]
        finally:
            model.train(was_training)
        results: list[ClientResult | None] = [None] * len(tasks)
        for chunk, chunk_results in zip(chunks, trained):
            for i, result in zip(chunk, chunk_results):
                results[i] = result
        return results


def _chunks(tasks: list[ClientTask], schedules: list[list[np.ndarray]], size: int, workers: int) -> list[list[int]]:
    """Task positions grouped into chunks of one dataset each, longest schedules first:
    per dataset, ceil(m / size) chunks rounded up to a multiple of ``workers`` (at most
    m), of sizes differing by at most one."""
    by_dataset: dict[int, list[int]] = {}
    for i, task in enumerate(tasks):
        by_dataset.setdefault(id(task.data.dataset), []).append(i)
    chunks = []
    for members in by_dataset.values():
        members.sort(key=lambda i: -len(schedules[i]))
        count = -(-len(members) // size)
        count = -(-count // workers) * workers  # whole waves of workers
        chunks += [chunk.tolist() for chunk in np.array_split(members, min(count, len(members)))]
    return chunks


def _concurrently(function: Callable, items: list, workers: int) -> list:
    """[function(item) for item in items], computed by ``workers`` threads with torch's
    threads split among them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(function, items))
    finally:
        torch.set_num_threads(threads)


@torch.enable_grad()  # a decorator: grad mode is per thread, and a chunk may train on a worker thread
def _train_chunk(
    global_params: Params,
    trainable: list[str],
    tasks: list[ClientTask],
    schedules: list[list[np.ndarray]],
    make_step: Callable[[Params, dict], Step],
) -> list[ClientResult]:
    """Train the C clients of ``tasks`` (all on one dataset) together: their ``trainable``
    parameters stacked, one ``make_step(stacked, states)`` step per batch. Off the CPU the
    chunk's samples move to the device once and each step gathers its batches there, so
    that no step waits on a copy from the host."""
    device = next(iter(global_params.values())).device
    dataset = tasks[0].data.dataset
    rows, weight, lr = _schedule(schedules, [task.data.indices for task in tasks], [task.lr for task in tasks], device)
    x, y = dataset.x, dataset.y
    if device.type != "cpu":
        needed, local = np.unique(rows.numpy(), return_inverse=True)
        x, y = x[torch.from_numpy(needed)].to(device), y[torch.from_numpy(needed)].to(device)
        rows = torch.from_numpy(local.reshape(rows.shape)).to(device)
    steps = torch.tensor([len(s) for s in schedules], device=device)
    stacked = {name: global_params[name].expand(len(tasks), *global_params[name].shape).clone() for name in trainable}
    step = make_step(stacked, _stack_states([task.state for task in tasks]))
    losses = torch.zeros(rows.shape[:2], device=device)
    for s in range(rows.shape[0]):
        losses[s] = step(x[rows[s]], y[rows[s]], weight[s], lr[s])
    taken = torch.arange(rows.shape[0], device=device).unsqueeze(1) < steps
    mean_loss = torch.where(taken, losses, 0.0).sum(0) / steps.clamp(min=1)
    mean_loss = mean_loss.masked_fill(steps == 0, float("nan")).tolist()
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


def _functional_step(model: nn.Module, strategy, global_params: Params, stacked: Params, state: dict) -> Step:
    """Any model: every client's gradient as ``vmap(grad(objective))`` over ``stacked``;
    :class:`UnsupportedModel` where the forward draws random numbers (vmap's clients would
    need each their own)."""
    fixed = {name: value for name, value in global_params.items() if name not in stacked}

    def objective(params, x_c, y_c, a_c, state_c):
        ce = F.cross_entropy(functional_call(model, {**fixed, **params}, (x_c,)), y_c, reduction="none")
        loss = torch.sum(a_c * ce)
        return strategy.local_objective(loss, params, global_params, state_c), loss

    gradient = vmap(grad(objective, has_aux=True))

    def step(x, y, a, lr):
        try:
            grads, loss = gradient(stacked, x, y, a, state)
        except RuntimeError as error:
            if "random operation" not in str(error):
                raise
            raise UnsupportedModel(
                f"the model ({type(model).__name__}) draws random numbers in its forward (e.g. F.dropout); allowed "
                "with the vectorised executor is a deterministic forward (train this one with the serial executor)"
            ) from None
        for name, w in stacked.items():
            w.addcmul_(grads[name], lr.view(-1, *[1] * (w.dim() - 1)), value=-1.0)
        return loss

    return step


def _layer_step(
    layers: list, strategy, global_params: Params, stacked: Params, state: dict, is_loss: bool, reads_params: bool
) -> Step:
    """A chain of supported layers, forward and backward written out. With logits z and
    p = softmax(z), dl_c/dz_{c,b} = a_{c,b} (p_{c,b} - onehot(y_{c,b})); scaled by
    dJ_c/dl_c (1 when the objective is the loss itself) it is back-propagated through
    the layers, each updating its parameters as the gradient passes; then
    partial J_c/partial W_c (taken at the parameters before the step, only if the
    objective reads them) is applied with the same step sizes."""

    def objective(loss, params, state_c):
        return strategy.local_objective(loss, params, global_params, state_c)

    derivative = vmap(grad(objective, argnums=(0, 1) if reads_params else 0))
    first = next(i for i, layer in enumerate(layers) if layer.params)  # no gradient needed below it

    def step(x, y, a, lr):
        h = x
        for layer in layers:
            h = layer.forward(h)
        log_p = torch.log_softmax(h, dim=-1)
        loss = -torch.sum(a * log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1), dim=1)
        dparams = {}
        if reads_params:
            dloss, dparams = derivative(loss, stacked, state)
            a = a * dloss.unsqueeze(1)
        elif not is_loss:
            a = a * derivative(loss, stacked, state).unsqueeze(1)
        g = log_p.exp_().scatter_add_(-1, y.unsqueeze(-1), torch.full_like(log_p[..., :1], -1.0)).mul_(a.unsqueeze(-1))
        for i in reversed(range(first, len(layers))):
            g = layers[i].backward(g, lr, need_input_grad=i > first)
        for name, d in dparams.items():
            stacked[name].addcmul_(d, lr.view(-1, *[1] * (d.dim() - 1)), value=-1.0)
        return loss

    return step


@torch.enable_grad()
def _probe(strategy, global_params: Params, state: dict) -> tuple[bool, bool]:
    """Whether the strategy's objective is the loss itself (FedAvg), and whether it
    depends on the parameters (FedProx's proximal term), asked of autograd on the
    global model."""
    params = {name: value.detach().requires_grad_() for name, value in global_params.items()}
    loss = torch.zeros((), device=next(iter(params.values())).device, requires_grad=True)
    objective = strategy.local_objective(loss, params, global_params, state)
    grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
    return objective is loss, any(g is not None for g in grads)


def _schedule(
    schedules: list[list[np.ndarray]], indices: list[np.ndarray], lrs: list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk's steps as padded arrays, S = the most steps of any client, B = the
    largest batch: rows (S, C, B), on the CPU, the dataset rows of each batch (padding
    repeats the client's first sample); on ``device``, the weights a (S, C, B), 1/n_{s,c}
    on the n_{s,c} real samples and 0 on padding, and lr (S, C), the client's step
    size while it has steps left and 0 after."""
    num_steps = max((len(s) for s in schedules), default=0)
    width = max((len(b) for s in schedules for b in s), default=0)
    rows = np.zeros((num_steps, len(schedules), width), dtype=np.int64)
    weight = np.zeros((num_steps, len(schedules), width), dtype=np.float32)
    lr = np.zeros((num_steps, len(schedules)), dtype=np.float32)
    for c, (batches, own) in enumerate(zip(schedules, indices)):
        rows[:, c, :] = own[0] if len(own) else 0
        for s, batch in enumerate(batches):
            rows[s, c, : len(batch)] = own[batch]
            weight[s, c, : len(batch)] = np.float32(1.0) / np.float32(len(batch))
        lr[: len(batches), c] = lrs[c]
    return torch.from_numpy(rows), torch.from_numpy(weight).to(device), torch.from_numpy(lr).to(device)


def _check_states(tasks: list[ClientTask]) -> None:
    """ValueError naming the first task whose ``state`` is not tensors of the first task's
    structure and shapes, and the first entry where it is not."""

    def layout(state: dict) -> tuple[dict[str, str], object]:
        leaves, spec = tree_flatten_with_path(state)
        return {keystr(path): _describe(leaf) for path, leaf in leaves}, spec

    def entry(entries: dict[str, str], key: str) -> str:
        return f"state{key} = {entries[key]}" if key in entries else f"no state{key}"

    first, first_spec = layout(tasks[0].state)
    for position, task in enumerate(tasks):
        own, spec = layout(task.state)
        wrong = next((key for key, what in own.items() if not what.startswith("a tensor")), None)
        differs = next((key for key in {**first, **own} if own.get(key) != first.get(key)), None)
        if wrong is not None:
            problem = f"holds {entry(own, wrong)}"
        elif differs is not None:
            problem = (f"holds {entry(own, differs)} where the first task's (client {tasks[0].client_id}) holds "
                       f"{entry(first, differs)}")
        elif spec != first_spec:  # the same entries in other containers, e.g. a list for a dict
            problem = f"has the structure {spec} where the first task's (client {tasks[0].client_id}) has {first_spec}"
        else:
            continue
        raise ValueError(
            f"task state of client {task.client_id} (task {position} of {len(tasks)}) {problem}; allowed is "
            "tensors of one structure and shapes for every task of a round"
        )


def _describe(leaf) -> str:
    """A state entry as an error message names it: a tensor with its shape, else its type."""
    return f"a tensor of shape {tuple(leaf.shape)}" if isinstance(leaf, torch.Tensor) else f"a {type(leaf).__name__}"


def _stack_states(states: list[dict]) -> dict:
    """The tasks' states (checked by :func:`_check_states`) stacked leaf by leaf along a
    new leading client axis."""
    flat = [tree_flatten(state) for state in states]
    return tree_unflatten([torch.stack(leaves) for leaves in zip(*(leaves for leaves, _ in flat))], flat[0][1])
