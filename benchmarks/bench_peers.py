"""fedecon against its peers on one FedAvg workload: ``python benchmarks/bench_peers.py``.

Workload (the MNIST "2NN" setting of McMahan et al., 2017): MNIST from the shared data
root through ``fl.data``; 100 clients, an IID split of the 60,000 training images
(``fl.data.partition.iid``, 600 each); 10 clients per round; the MLP 784-200-200-10
(``fl.models.mlp.MLP``), every run starting from the same initial weights; local work
E=1 epoch of plain SGD (no momentum, no weight decay) with B=10 and the same lr, a fresh
shuffle of the client's data per round; the server takes the sample-weighted mean of
the clients' models. Every framework does exactly this; each draws its own shuffles,
and Flower samples its clients itself, so accuracies agree only statistically.

Runs (each skipped with a message when its package is missing):

- ``fedecon serial`` / ``fedecon vectorised`` / ``fedecon ray``: ``fl.server.run_federated``
  with :class:`SerialExecutor`, :class:`VectorisedExecutor` and :class:`RayExecutor`
  (one actor per ``--actor-cpus`` CPUs).
- ``hand-written``: a plain PyTorch loop (``torch.optim.SGD`` per client, state-dict
  averaging); no framework at all, the floor the others are compared with.
- ``flower``: Flower's Simulation Engine (``flwr.simulation.run_simulation``, the
  Message API: a ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg``, a
  ``ClientApp`` whose train function runs the hand-written client loop), 100 virtual
  SuperNodes on Ray actors of ``--actor-cpus`` CPUs each. Each actor process loads
  MNIST and the partition once and keeps it.
- ``pfl``: Apple's pfl-research (``pfl.algorithm.FederatedAveraging`` on a
  ``SimulatedBackend`` with ``PyTorchModel``, weighting by data points, central SGD
  with lr 1, which applies the mean update), single process, fed the same client
  cohorts as fedecon.

Measured, per run: ``rounds/s``, the steady-state rate, (R - 1) / (time from the end of
round 1 to the end of round R), which leaves out start-up and each framework's warm-up
round (Ray start, actor start, first-touch allocation, pfl's round-0 evaluation of every
client); ``total s``, wall time from the call that starts training to its return, set-up
included (for Flower, starting Ray and its actors); ``cpu s/round``: user + system
CPU seconds per steady round of this process and all its descendants (a local Ray's
raylet, GCS and workers included), from /proc; ``accuracy``: the final global model's
top-1 accuracy on the 10,000 MNIST test images, evaluated by ``fl.evaluation`` for
every run (not timed). Ratios are given both ways: of steady rounds/s (wall time, what a
user waits; it rewards running clients in parallel processes) and of CPU seconds per
round (the work done, which other load on the machine disturbs much less). On a machine
shared with other work, compare within one invocation and rerun when the printed load
average is high.

Threads: every process trains with ``--threads`` torch threads (default 1: on a small
machine shared with other work, several OpenMP threads per process wait on each other
and a step can slow a hundredfold). In-process runs (fedecon serial and vectorised,
hand-written, pfl) use one process; Flower and fedecon ray use Ray actors of
``--actor-cpus`` CPUs each (default 1, so as many clients in parallel as there are
CPUs), each actor with ``max(1, --actor-cpus)`` threads.

Options: ``--rounds`` (20), ``--lr`` (0.05), ``--root`` (the shared data root),
``--seed`` (0), ``--threads`` (1), ``--actor-cpus`` (1), ``--only NAME [NAME ...]``
to run a subset.

A run fails (reported, left out of the ratios, exit status 1) where it raises, where a
client's mean mini-batch loss is not finite (fedecon's executors, the hand-written and
Flower's client loop check it; a Flower client's error reply fails its run rather than
being left out of the mean) or where the final global model is not finite (pfl).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arguments import integer, positive  # noqa: E402
from fl import evaluation  # noqa: E402
from fl.algorithms import FedAvg  # noqa: E402
from fl.data import DatasetNotFoundError, load_dataset, partition  # noqa: E402
from fl.models.mlp import MLP  # noqa: E402
from fl.runtime.launch import round_seed  # noqa: E402

NUM_CLIENTS, PER_ROUND, EPOCHS, BATCH = 100, 10, 1, 10
HIDDEN = (200, 200)
SHAPE, CLASSES = (1, 28, 28), 10
DEFAULT_ROOT = REPO.parent / "shared" / "data"
NAMES = ("fedecon serial", "fedecon vectorised", "fedecon ray", "hand-written", "flower", "pfl")


# ----------------------------------------------------------------- the workload
def client_indices(train, seed: int) -> list[np.ndarray]:
    """The IID split every framework trains on."""
    return list(partition.iid(train.labels(), NUM_CLIENTS, seed=seed))


def initial_state(seed: int) -> dict[str, torch.Tensor]:
    """The one set of initial weights every run starts from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: v.detach().clone() for k, v in MLP(SHAPE, CLASSES, HIDDEN).state_dict().items()}


def cohorts(rounds: int, seed: int) -> list[list[int]]:
    """The clients fedecon's FedAvg samples in each round (uniform, without
    replacement); the hand-written loop and pfl are given the same cohorts."""
    strategy = FedAvg(clients_per_round=PER_ROUND)
    available = {c: range(1) for c in range(NUM_CLIENTS)}  # sampling reads only the ids
    return [
        [task.client_id for task in strategy.configure_round(t, available, round_seed(seed, t))]
        for t in range(rounds)
    ]


def local_sgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, generator: torch.Generator) -> float:
    """The hand-written client: E passes of SGD over a fresh shuffle, batches of B;
    returns the mean mini-batch loss. FloatingPointError where it is not finite (the
    step size diverged), as fedecon's executors raise TrainingDiverged."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(EPOCHS):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    mean = torch.stack(losses).mean().item()
    if not math.isfinite(mean):
        raise FloatingPointError(f"lr={lr}: local SGD diverged (mean mini-batch loss {mean})")
    return mean


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live descendants (Ray's
    raylet, GCS and workers, which a local Ray starts under this process). Linux
    /proc; elsewhere this process alone."""
    if not os.path.isdir("/proc/self/task"):
        return time.process_time()
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    total, stack = 0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall seconds from :meth:`begin` to the end of each round (``ends``), and
    :func:`tree_cpu_seconds` at the end of round 1 and of round R (``cpu``)."""

    def __init__(self, rounds: int):
        self.rounds, self.ends, self.cpu, self.start = rounds, [], [], time.perf_counter()

    def begin(self) -> None:
        self.start = time.perf_counter()

    def tick(self) -> None:
        self.ends.append(time.perf_counter() - self.start)
        if len(self.ends) in (1, self.rounds):
            self.cpu.append(tree_cpu_seconds())


@dataclass
class Outcome:
    """clock: the rounds' ends and CPU readings; total: seconds of the whole timed
    call; params: the final global model."""

    name: str
    clock: Clock
    total: float
    params: dict[str, torch.Tensor]

    @property
    def rate(self) -> float:
        """Steady rounds per second: rounds 2..R."""
        ends = self.clock.ends
        return (len(ends) - 1) / (ends[-1] - ends[0])

    @property
    def cpu_per_round(self) -> float:
        """CPU seconds per steady round, all processes of the run together."""
        return (self.clock.cpu[-1] - self.clock.cpu[0]) / (len(self.clock.ends) - 1)


# ----------------------------------------------------------------- fedecon
def run_fedecon(name: str, executor, train, parts, init, rounds, lr, seed) -> Outcome:
    from fl.server import run_federated

    clock = Clock(rounds)

    class TimedFedAvg(FedAvg):
        """FedAvg whose aggregation, the last step of a round, ticks the clock."""

        def aggregate(self, global_params, results):
            new = super().aggregate(global_params, results)
            clock.tick()
            return new

    subsets = [train.subset(p) for p in parts]
    strategy = TimedFedAvg(epochs=EPOCHS, batch_size=BATCH, lr=lr, clients_per_round=PER_ROUND)
    clock.begin()
    result = run_federated(
        MLP(SHAPE, CLASSES, HIDDEN), subsets, strategy, rounds, executor=executor, seed=seed,
        progress=False, init_params=init,
    )
    return Outcome(name, clock, time.perf_counter() - clock.start, result.params)


# ----------------------------------------------------------------- hand-written
def run_handwritten(train, parts, init, rounds, lr, seed) -> Outcome:
    """A plain PyTorch FedAvg loop; client tensors gathered once before timing."""
    data = [(train.x[torch.from_numpy(p)], train.y[torch.from_numpy(p)]) for p in parts]
    plan = cohorts(rounds, seed)
    model = MLP(SHAPE, CLASSES, HIDDEN)
    generator = torch.Generator().manual_seed(seed)
    clock = Clock(rounds)
    global_state = {k: v.clone() for k, v in init.items()}
    for clients in plan:
        total = sum(len(data[c][1]) for c in clients)
        new_state = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for c in clients:
            model.load_state_dict(global_state)
            local_sgd(model, *data[c], lr, generator)
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    new_state[k] += (len(data[c][1]) / total) * v
        global_state = new_state
        clock.tick()
    return Outcome("hand-written", clock, time.perf_counter() - clock.start, global_state)


# ----------------------------------------------------------------- Flower
# The ClientApp runs in Ray actor processes, which import this file as the module
# ``bench_peers`` (see run_flower); the cache lives once per actor process.
_ACTOR_DATA: dict = {}


def _actor_client_data(root: str, seed: int, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
    if _ACTOR_DATA.get("key") != (root, seed):
        train, _ = load_dataset("mnist", root=root)
        parts = client_indices(train, seed)
        _ACTOR_DATA.clear()
        _ACTOR_DATA["key"] = (root, seed)
        _ACTOR_DATA["clients"] = [(train.x[torch.from_numpy(p)], train.y[torch.from_numpy(p)]) for p in parts]
    return _ACTOR_DATA["clients"][pid]


def flower_train(msg, context):
    """Flower ClientApp train handler: load the global arrays, run the hand-written
    client loop on this node's partition, reply with the arrays and num-examples."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    config = msg.content["config"]
    pid = int(context.node_config["partition-id"])
    seed = int(config["seed"])
    x, y = _actor_client_data(str(config["root"]), seed, pid)
    model = MLP(SHAPE, CLASSES, HIDDEN)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    generator = torch.Generator().manual_seed(seed * 1_000_003 + int(config["server-round"]) * 1009 + pid)
    loss = local_sgd(model, x, y, float(config["lr"]), generator)
    metrics = MetricRecord({"num-examples": len(y), "train_loss": loss})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def run_flower(root, init, rounds, lr, seed, actor_cpus) -> Outcome:
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
    from flwr.simulation import run_simulation

    # Make the handlers importable by reference in the actors: Flower hands the
    # driver's sys.path to them, so this file's folder on sys.path suffices.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_peers as this  # noqa: PLC0415

    client_app = ClientApp()
    client_app.train()(this.flower_train)
    server_app = ServerApp()
    clock = Clock(rounds)
    final: dict = {}
    errors: list[str] = []

    class CheckedFedAvg(FlowerFedAvg):
        """Flower's FedAvg noting the clients whose reply is an error (local SGD diverged,
        say), which it leaves out of the mean of the others: the run fails."""

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            errors.extend(f"round {server_round}: {reply.error.reason}" for reply in replies if reply.has_error())
            return super().aggregate_train(server_round, replies)

    @server_app.main()
    def main(grid, context):
        strategy = CheckedFedAvg(
            fraction_train=PER_ROUND / NUM_CLIENTS, fraction_evaluate=0.0,
            min_train_nodes=PER_ROUND, min_available_nodes=NUM_CLIENTS,
        )

        def tick(server_round, arrays):  # called before round 1 and after every round
            if server_round >= 1:
                clock.tick()
            return None

        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(init), num_rounds=rounds,
            train_config=ConfigRecord({"lr": lr, "seed": seed, "root": str(root)}), evaluate_fn=tick,
        )
        final["params"] = result.arrays.to_torch_state_dict()

    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every round at INFO
    clock.begin()
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=NUM_CLIENTS,
        backend_config={
            "client_resources": {"num_cpus": actor_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count()},
        },
    )
    total = time.perf_counter() - clock.start
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) of the Flower run failed, the first in {errors[0]}")
    if "params" not in final or len(clock.ends) != rounds:
        raise RuntimeError(f"the Flower run did not complete ({len(clock.ends)} of {rounds} rounds); see its log above")
    return Outcome("flower", clock, total, final["params"])


# ----------------------------------------------------------------- pfl
def run_pfl(train, parts, init, rounds, lr, seed) -> Outcome:
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics, Weighted
    from pfl.model.pytorch import PyTorchModel

    class PflMLP(MLP):
        """pfl's PyTorchModel asks the module for ``loss`` and ``metrics``."""

        def loss(self, x, y, eval=False):
            self.eval() if eval else self.train()
            return F.cross_entropy(self(x), y)

        def metrics(self, x, y, eval=False):
            self.eval() if eval else self.train()
            with torch.no_grad():
                out = self(x)
            n = len(y)
            return {
                "loss": Weighted(F.cross_entropy(out, y, reduction="sum").item(), n),
                "accuracy": Weighted((out.argmax(1) == y).sum().item(), n),
            }

    data = [(train.x[torch.from_numpy(p)], train.y[torch.from_numpy(p)]) for p in parts]
    plan = iter([c for clients in cohorts(rounds, seed) for c in clients])
    rng = np.random.default_rng(seed)

    def make_user(user_id):
        # pfl iterates a user's data in stored order: shuffle it afresh each time it is sampled
        order = torch.from_numpy(rng.permutation(len(data[user_id][1])))
        return Dataset(raw_data=[data[user_id][0][order], data[user_id][1][order]], user_id=str(user_id))

    federated = FederatedDataset(make_user, user_sampler=lambda: next(plan))
    module = PflMLP(SHAPE, CLASSES, HIDDEN)
    module.load_state_dict(init)
    model = PyTorchModel(
        model=module, local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    backend = SimulatedBackend(training_data=federated, val_data=federated, postprocessors=[WeightByDatapoints()])
    clock = Clock(rounds)

    class Tick(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            clock.tick()
            return False, Metrics()

    clock.begin()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=rounds, evaluation_frequency=rounds + 1,
            train_cohort_size=PER_ROUND, val_cohort_size=None,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(local_learning_rate=lr, local_num_epochs=EPOCHS, local_batch_size=BATCH),
        model_eval_params=NNEvalHyperParams(local_batch_size=1000),
        callbacks=[Tick()],
        send_metrics_to_platform=False,  # pfl would print every round's metrics
    )
    total = time.perf_counter() - clock.start
    params = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return Outcome("pfl", clock, total, params)


# ----------------------------------------------------------------- main
def missing(module: str) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec(module) else module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=integer(2), default=20, help="at least 2: the steady rate leaves out round 1")
    parser.add_argument("--lr", type=positive, default=0.05)
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    parser.add_argument("--seed", type=integer(0), default=0)
    parser.add_argument("--threads", type=integer(1), default=1)
    parser.add_argument("--actor-cpus", type=integer(1, os.cpu_count() or 1, " (this machine's cores: the Ray "
                                                    "cluster it starts has no more, and an actor asking for more "
                                                    "waits for good)"), default=1)
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        train, test = load_dataset("mnist", root=args.root)
    except DatasetNotFoundError as error:
        parser.error(f"--root={args.root!r}: {error}")
    parts = client_indices(train, args.seed)
    init = initial_state(args.seed)
    print(
        f"MNIST IID, {NUM_CLIENTS} clients x {len(parts[0])} samples, {PER_ROUND}/round, MLP 784-200-200-10, "
        f"E={EPOCHS} B={BATCH} SGD lr={args.lr}, {args.rounds} rounds; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), actors of {args.actor_cpus} CPU(s), "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )

    outcomes: dict[str, Outcome] = {}
    failed: list[str] = []

    def attempt(name, needs, run):
        if name not in args.only:
            return
        absent = next((m for m in needs if missing(m)), None)
        if absent:
            print(f"{name:<20} skipped: Python package '{absent}' is not installed in {sys.prefix}")
            return
        try:
            outcome = run()
            if not all(torch.isfinite(value).all() for value in outcome.params.values()):
                raise FloatingPointError("the final global model has NaN or infinite parameters (training diverged)")
        except Exception as error:  # report and go on with the others
            print(f"{name:<20} failed: {type(error).__name__}: {error}")
            failed.append(name)
            return
        outcomes[name] = outcome
        accuracy = evaluation.accuracy(MLP(SHAPE, CLASSES, HIDDEN), outcome.params, test)
        print(
            f"{name:<20} {outcome.rate:7.3f} rounds/s  {outcome.cpu_per_round:6.3f} cpu s/round  "
            f"total {outcome.total:6.1f} s  accuracy {accuracy:.4f}",
            flush=True,
        )

    from fl.executors import SerialExecutor

    def fedecon(name, executor):
        return run_fedecon(name, executor, train, parts, init, args.rounds, args.lr, args.seed)

    attempt("fedecon serial", [], lambda: fedecon("fedecon serial", SerialExecutor()))

    def vectorised():
        try:
            from fl.executors.vectorised import VectorisedExecutor
        except ImportError as error:
            raise RuntimeError(f"fl.executors.vectorised.VectorisedExecutor is not available ({error})") from error
        return fedecon("fedecon vectorised", VectorisedExecutor())

    attempt("fedecon vectorised", [], vectorised)

    def ray_executor():
        import ray

        from fl.executors.ray_executor import RayExecutor

        executor = RayExecutor(
            num_cpus=args.actor_cpus, init_options={"include_dashboard": False, "num_cpus": os.cpu_count()}
        )
        try:
            return fedecon("fedecon ray", executor)
        finally:
            executor.close()
            if ray.is_initialized():
                ray.shutdown()

    attempt("fedecon ray", ["ray"], ray_executor)
    attempt("hand-written", [], lambda: run_handwritten(train, parts, init, args.rounds, args.lr, args.seed))
    attempt(
        "flower", ["flwr", "ray"], lambda: run_flower(args.root, init, args.rounds, args.lr, args.seed, args.actor_cpus)
    )
    attempt("pfl", ["pfl"], lambda: run_pfl(train, parts, init, args.rounds, args.lr, args.seed))

    print("\nratios: steady rounds/s (wall) and 1 / cpu s per round (CPU work, steadier on a busy machine):")
    for numerator, denominator in (
        ("fedecon vectorised", "flower"),
        ("fedecon vectorised", "pfl"),
        ("pfl", "hand-written"),
        ("fedecon vectorised", "hand-written"),
        ("fedecon serial", "hand-written"),
        ("flower", "hand-written"),
        ("fedecon ray", "flower"),
    ):
        if numerator in outcomes and denominator in outcomes:
            a, b = outcomes[numerator], outcomes[denominator]
            wall, cpu = a.rate / b.rate, b.cpu_per_round / a.cpu_per_round
            print(f"  {numerator} / {denominator}: {wall:.2f} wall, {cpu:.2f} cpu")
        else:
            absent = [f"{n} {'failed' if n in failed else 'did not run'}" for n in (numerator, denominator)
                      if n not in outcomes]
            print(f"  {numerator} / {denominator}: n/a ({', '.join(absent)})")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
