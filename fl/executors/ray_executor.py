"""Clients' local training on Ray actors: many cores, many GPUs, or a cluster.

The executor keeps ``num_actors`` long-lived Ray actors. Each actor runs the reference
:class:`~fl.executors.serial.SerialExecutor` on the clients it is handed, so the
numbers are the serial executor's for the same seed (each task carries its own batch
order's seed; which actor runs it, and in what order, does not matter).

What travels, and when:

- once per dataset: its ``x`` and ``y`` arrays are put in Ray's object store (once per
  executor) and fetched by each actor the first time it trains a client of that
  dataset; the actor keeps it (on its GPU when it has one). Actors on one node share
  the node's copy of a CPU dataset (Ray hands numpy arrays out of the object store
  without copying).
- once per model template: a CPU copy of its architecture, fetched and kept by each actor.
  The template is sent again when the module, its layers (``repr``), its state's names,
  shapes and dtypes, or which parameters train (``requires_grad``) changed since the last
  run (other attributes of a custom module are not watched: :meth:`RayExecutor._model_token`);
  actors and the object store keep only the current one.
- every round: the global parameters (one object, fetched once per node), the strategy's
  ``client_view()`` (what ``local_objective`` needs: its hyperparameters, not the
  server's state such as SCAFFOLD's control variates or an optimiser's moments), and
  per task its metadata: client id, index array into the dataset, E, B, lr, seed, state.
  Each client's trained parameters come back on the CPU and are moved to the device of
  ``global_params``.

Tasks are dealt to actors once per round, largest first to the least-loaded actor
(load = samples the client will pass through, ``Subset.samples_in_steps``: E x n for
E epochs over n samples, as the runtime's simulated compute time counts them), so one
call per actor per round. ``address`` points at an existing cluster; the package ``fl``
must be importable by the cluster's workers (installed there, or shipped with
``runtime_env``; see :class:`RayExecutor`). Ray is imported when an executor first
needs it, not with this module.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from typing import Any

import torch
from torch import nn

from fl.checks import check_integer, check_nonnegative
from fl.data.dataset import ArrayDataset, Subset
from fl.executors.base import ClientResult, ClientTask, Executor
from fl.executors.serial import SerialExecutor
from fl.models import Params


def _ray():
    """The ``ray`` module, imported on first use (Ray is optional: ``pip install "fedecon[ray]"``)."""
    try:
        import ray
    except ImportError:
        raise ImportError('RayExecutor needs Ray: pip install "ray>=2.9" (or "fedecon[ray]")') from None
    return ray


class _ClientWorker:
    """The body of one actor: cached datasets and model templates, and the serial
    executor run on them. Created only through Ray (see ``RayExecutor._start``)."""

    def __init__(self, num_threads: int):
        torch.set_num_threads(max(1, num_threads))
        gpus = _ray().get_gpu_ids()
        self.device = torch.device("cuda") if gpus and torch.cuda.is_available() else torch.device("cpu")
        self.datasets: dict[int, ArrayDataset] = {}
        self.models: dict[int, nn.Module] = {}
        self.executor = SerialExecutor()

    def load(self, datasets: dict[int, Any], models: dict[int, Any]) -> None:
        """Fetch and keep the datasets (token -> ObjectRef of a dict of arrays) this actor
        has not seen, and the model template (token -> ObjectRef of a CPU module) when a
        new one comes, in place of the one kept before."""
        ray = _ray()
        for token, ref in datasets.items():
            arrays = ray.get(ref)
            with warnings.catch_warnings():
                # The object store's arrays are read-only; training only gathers from them.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
            if self.device.type != "cpu":
                x, y = x.to(self.device), y.to(self.device)
            self.datasets[token] = ArrayDataset(arrays["name"], x, y, arrays["num_classes"])
        if models:
            self.models = {token: ray.get(ref).to(self.device) for token, ref in models.items()}

    def run(
        self, model_token: int, strategy, global_params: Params, tasks: list, datasets: dict, models: dict
    ) -> list[ClientResult]:
        """Load what is new (see :meth:`load`), then train ``tasks`` (triples: dataset
        token, index array, ClientTask without data) from ``global_params`` with the
        serial executor; results with CPU params."""
        self.load(datasets, models)
        params = {name: tensor.to(self.device) for name, tensor in global_params.items()}
        full = [dataclasses.replace(stub, data=Subset(self.datasets[token], indices)) for token, indices, stub in tasks]
        results = self.executor.run(self.models[model_token], strategy, params, full)
        return [
            dataclasses.replace(r, params={name: tensor.cpu() for name, tensor in r.params.items()}) for r in results
        ]

    def node(self) -> str:
        """The actor's host and device, for diagnostics."""
        return f"{os.uname().nodename} pid {os.getpid()} {self.device}"


def _with_local_code(runtime_env: dict | None) -> dict:
    """``runtime_env`` with the folder that holds this ``fl`` package put first on the
    workers' PYTHONPATH (a private local Ray's workers then import the same code as
    this process, from a checkout as from an install)."""
    env = dict(runtime_env or {})
    env_vars = dict(env.get("env_vars") or {})
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    existing = env_vars.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    env_vars["PYTHONPATH"] = os.pathsep.join([here, *([existing] if existing else [])])
    env["env_vars"] = env_vars
    return env


class RayExecutor(Executor):
    """Local training as Ray tasks on ``num_actors`` long-lived actors.

    address: where Ray runs when it is not yet initialised in this process. ``None``
        starts a private local Ray on this machine (its workers import ``fl`` from
        where this process does); ``"auto"`` joins a cluster started
        on this machine with ``ray start --head``; ``"ray://host:10001"`` connects to a
        remote cluster through Ray Client. When Ray is already initialised (e.g. the
        caller ran ``ray.init(...)``), that session is used and ``address`` is ignored.
    num_actors: actors to train on (default: as many as the cluster's CPUs, or GPUs when
        ``num_gpus > 0``, allow at the per-actor request; at least 1).
    num_cpus, num_gpus: Ray resources each actor reserves; torch in an actor uses
        ``max(1, num_cpus)`` threads, and an actor with a GPU trains on it.
    runtime_env: Ray runtime environment for the actors, e.g. ``{"py_modules": [fl]}``
        (the imported package) to ship this code to a cluster whose workers lack it,
        or ``{"pip": ["fedecon"]}``. Used when this executor initialises Ray; with Ray
        already initialised it is set on the actors themselves.
    init_options: further keyword arguments for ``ray.init`` (e.g. ``num_cpus``,
        ``include_dashboard``) when this executor initialises Ray.

    The constructor only stores its arguments; Ray and the actors start on the first
    :meth:`run`. :meth:`close` (or leaving a ``with`` block) ends the actors, and Ray
    too when this executor started it. Results are in task order and equal the serial
    executor's for the same tasks (CPU actors, up to float rounding where their torch
    thread count differs from the caller's; on GPU actors, up to CUDA's float
    non-determinism).
    """

    def __init__(
        self,
        address: str | None = None,
        num_actors: int | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        runtime_env: dict | None = None,
        init_options: dict | None = None,
    ):
        self.address = address
        self.num_actors = num_actors
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.runtime_env = runtime_env
        self.init_options = init_options
        self._actors: list = []
        self._owns_ray = False
        self._dataset_refs: dict[int, tuple[ArrayDataset, int, Any]] = {}  # id(dataset) -> (dataset, token, ref)
        self._model_ref: tuple[nn.Module, tuple, int, Any] | None = None  # (model, fingerprint, token, ref)
        self._model_tokens = 0  # templates made so far: the next one's token
        self._known: list[set[tuple[str, int]]] = []  # per actor: ("data"|"model", token) already sent

    # -- lifecycle ---------------------------------------------------------------
    def _check(self) -> None:
        check_integer("num_actors", self.num_actors, optional=True)
        for key, value in (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus)):
            check_nonnegative(key, value)
        if self.address is not None and not isinstance(self.address, str):
            raise ValueError(
                f"address={self.address!r}: allowed is None, 'auto' or an address such as 'ray://host:10001'"
            )

    def _start(self) -> None:
        ray = _ray()
        self._check()
        actor_env = None
        if not ray.is_initialized():
            runtime_env = self.runtime_env
            if self.address is None:
                runtime_env = _with_local_code(runtime_env)
            ray.init(address=self.address, runtime_env=runtime_env, **(self.init_options or {}))
            self._owns_ray = True
        else:
            actor_env = self.runtime_env
        resources = ray.cluster_resources()
        count = self.num_actors
        if count is None:
            kind, per_actor = ("GPU", self.num_gpus) if self.num_gpus > 0 else ("CPU", self.num_cpus)
            count = max(1, int(resources.get(kind, 0) // per_actor)) if per_actor > 0 else 1
        for kind, per_actor in (("CPU", self.num_cpus), ("GPU", self.num_gpus)):
            if per_actor > 0 and count * per_actor > resources.get(kind, 0):
                warnings.warn(
                    f"RayExecutor: {count} actors x {per_actor} {kind} exceed the cluster's "
                    f"{resources.get(kind, 0):g} {kind}; the actors that do not fit wait, and training with "
                    "them, until the cluster grows",
                    RuntimeWarning,
                    stacklevel=3,
                )
        options = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if actor_env is not None:
            options["runtime_env"] = actor_env
        remote_worker = ray.remote(_ClientWorker).options(**options)
        threads = max(1, int(self.num_cpus))
        self._actors = [remote_worker.remote(threads) for _ in range(count)]
        self._known = [set() for _ in range(count)]

    def close(self) -> None:
        """End the actors and release the cached objects; shut Ray down if this
        executor started it. The executor can be used again (it restarts)."""
        if self._actors or self._owns_ray:  # else Ray never ran here: nothing to end, nor to import
            ray = _ray()
            if ray.is_initialized():
                for actor in self._actors:
                    ray.kill(actor)
                if self._owns_ray:
                    ray.shutdown()
        self._actors, self._known, self._owns_ray = [], [], False
        self._dataset_refs.clear()
        self._model_ref = None

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def nodes(self) -> list[str]:
        """Host, process id and device of each actor (starts them if needed)."""
        if not self._actors:
            self._start()
        return _ray().get([actor.node.remote() for actor in self._actors])

    # -- caching -----------------------------------------------------------------
    def _dataset_token(self, dataset: ArrayDataset) -> int:
        entry = self._dataset_refs.get(id(dataset))
        if entry is None:
            arrays = {
                "name": dataset.name,
                "x": dataset.x.detach().cpu().numpy(),
                "y": dataset.y.detach().cpu().numpy(),
                "num_classes": dataset.num_classes,
            }
            entry = (dataset, len(self._dataset_refs), _ray().put(arrays))
            self._dataset_refs[id(dataset)] = entry
        return entry[1]

    def _model_token(self, model: nn.Module) -> int:
        """The token of ``model``'s template: the current one while the module, its layers'
        ``repr``, its state's names, shapes and dtypes and its trainable parameters are
        those it was made from; else a new CPU copy, put in place of the current one. Other
        attributes a custom forward reads (a temperature, say) are not watched: after
        changing one, :meth:`close` the executor (or use a new module) so the actors get it."""
        fingerprint = (id(model), repr(model), tuple(
            (name, tuple(tensor.shape), tensor.dtype, tensor.requires_grad)
            for name, tensor in model.state_dict(keep_vars=True).items()))
        if self._model_ref is None or self._model_ref[1] != fingerprint:  # keeps model: its id is not reused
            self._model_ref = (model, fingerprint, self._model_tokens, _ray().put(copy.deepcopy(model).cpu()))
            self._model_tokens += 1
        return self._model_ref[2]

    # -- the executor --------------------------------------------------------------
    def run(self, model: nn.Module, strategy, global_params: Params, tasks: list[ClientTask]) -> list[ClientResult]:
        if not tasks:
            return []
        if not self._actors:
            self._start()
        ray = _ray()
        device = next(iter(global_params.values())).device
        model_token = self._model_token(model)
        params_ref = ray.put({name: tensor.detach().cpu() for name, tensor in global_params.items()})
        strategy_ref = ray.put(strategy.client_view())

        # Deal tasks to actors: largest first, each to the least-loaded actor.
        def work(task: ClientTask) -> int:
            return task.data.samples_in_steps(task.num_steps, task.batch_size)

        loads = [0] * len(self._actors)
        shares: list[list[int]] = [[] for _ in self._actors]
        for position in sorted(range(len(tasks)), key=lambda i: -work(tasks[i])):
            actor = loads.index(min(loads))
            shares[actor].append(position)
            loads[actor] += work(tasks[position])

        calls, order = [], []
        for actor_index, positions in enumerate(shares):
            if not positions:
                continue
            actor, known = self._actors[actor_index], self._known[actor_index]
            new_data, new_models, payload = {}, {}, []
            for position in sorted(positions):
                task = tasks[position]
                token = self._dataset_token(task.data.dataset)
                if ("data", token) not in known:
                    new_data[token] = self._dataset_refs[id(task.data.dataset)][2]
                    known.add(("data", token))
                payload.append((token, task.data.indices, dataclasses.replace(task, data=None)))
                order.append(position)
            if ("model", model_token) not in known:  # the actor replaces its template with this one
                new_models[model_token] = self._model_ref[3]
                known -= {entry for entry in known if entry[0] == "model"}
                known.add(("model", model_token))
            calls.append(actor.run.remote(model_token, strategy_ref, params_ref, payload, new_data, new_models))

        try:
            returned = [result for batch in ray.get(calls) for result in batch]
        except ray.exceptions.RayError as error:
            # An actor may have died or missed what it was sent: start afresh next time.
            for actor in self._actors:
                ray.kill(actor)
            self._actors, self._known = [], []
            cause = getattr(error, "cause", None)
            if isinstance(cause, ValueError):  # the user's error (e.g. TrainingDiverged), as serial training gives it
                raise cause from None
            raise RuntimeError(f"RayExecutor: a client's training failed on a Ray actor: {error}") from error
        results: list[ClientResult | None] = [None] * len(tasks)
        for position, result in zip(order, returned):
            results[position] = dataclasses.replace(
                result, params={name: tensor.to(device) for name, tensor in result.params.items()}
            )
        return results  # type: ignore[return-value]
