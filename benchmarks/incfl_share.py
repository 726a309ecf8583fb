"""IncFL against FedAvg: the share of clients each one's global model incentivises.

The check of Cho et al. (2022), "To Federate or Not To Federate", who report that IncFL
incentivises 30-55% more clients than standard federated training. Per seed:

1. a random pool of ``--pool`` training samples (MNIST, Fashion-MNIST, CIFAR-10: 10,000, so that each of the
   100 clients holds about 80 and its local model stays weak-ish); a stratified fifth
   of it is held out as validation data, the rest is split among ``--clients`` clients
   by Dirichlet(``--alpha``) label skew; p_k is client k's label distribution;
2. client k's loss under a model w is f_k(w) = sum_c p_kc l_c(w), with l_c the mean
   cross-entropy on class c of the validation set (what the server's weights use) or of
   the test set (what is reported);
3. each client trains a local-only model w_hat_k (``--local-epochs`` epochs of SGD
   from the common initial model); rho_k = f_k(w_hat_k);
4. FedAvg and IncFL train from the same initial model, with the same clients, local
   epochs, batch size, step size and ``--rounds`` rounds (the same budget); FedAvg
   weighs clients by their samples, or (``--fedavg-weighting uniform``) once each, as
   IncFL's weights count them;
5. reported: the incentivised share mean_k 1{f_k(w) < rho_k} on test data for each
   (``--criterion accuracy``: mean_k 1{acc_k(w) > acc_k(w_hat_k)}, acc_k the accuracy on
   the test set reweighted to p_k; IncFL's weights still use the validation losses),
   their ratio, and the global models' test accuracy;
6. with ``--equilibrium``: the share of clients still in when, starting from everyone,
   clients with f_k(w) >= rho_k leave and the same algorithm retrains on those who stay
   until nobody leaves (``incentives.participation.participation_equilibrium``);
7. per seed, IncFL's weights at its final model: the spread of the validation gaps
   f_k(w) - rho_k and the largest weight over the smallest.

Run from the repository root::

    python benchmarks/incfl_share.py                      # MNIST, 100 clients, seeds 0-4
    python benchmarks/incfl_share.py --dataset fashion_mnist --seeds 0 1 2 [--rounds 100]
    python benchmarks/incfl_share.py --dataset digits --clients 50 [--gap-scale 2] [--criterion accuracy]
    python benchmarks/incfl_share.py --dataset digits --clients 50 --fedavg-weighting uniform  # clients count once
    python benchmarks/incfl_share.py --dataset digits --clients 50 --rounds 150 --hidden  # logistic regression
    python benchmarks/incfl_share.py --dataset digits --clients 50 --rounds 100 --fraction 0.2
    python benchmarks/incfl_share.py --model cnn --device cuda --vectorised --rounds 100  # on a GPU
    python benchmarks/incfl_share.py --dataset cifar10 --model cnn --lr 0.02 --device cuda --vectorised --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl.algorithms import FedAvg, child_seed  # noqa: E402
from fl.algorithms.incfl import (  # noqa: E402
    IncFL,
    distribution_losses,
    incentive_weights,
    incentivised_fraction,
    train_local_models,
)
from fl.data import DatasetNotFoundError, load_dataset, partition  # noqa: E402
from fl.data.dataset import ArrayDataset  # noqa: E402
from fl.data.federation import dirichlet_federation  # noqa: E402
from fl.executors.vectorised import VectorisedExecutor  # noqa: E402
from fl.models import MODEL_NAMES, build_model, get_params  # noqa: E402
from fl.evaluation import accuracy_on_distribution, evaluate, per_class_accuracy  # noqa: E402
from fl.server import run_federated  # noqa: E402
from incentives.participation import participation_equilibrium  # noqa: E402
from arguments import integer, positive, share  # noqa: E402

# the seed's streams of the split and of the local models: keys 3 and 2, which the runs here (trained with the
# seed itself, no dropout, no FedBuff) never draw; fixed, so that the figures in fl/algorithms/incfl.py reproduce
_FEDERATION, _LOCAL = 3, 2
VALIDATION = 0.2  # the share of the pool held out as validation data


def one_seed(
    train: ArrayDataset, test: ArrayDataset, args: argparse.Namespace, seed: int, fedavg: FedAvg, training: dict
) -> tuple[dict[str, list[float]], tuple[float, float, float]]:
    """{"FedAvg" | "IncFL": [incentivised share on test data, test accuracy(, share that
    stays at the participation equilibrium)]}, and IncFL's weights at its final model:
    (5th and 95th percentile of the validation gaps f_k(w) - rho_k in nats, largest
    weight / smallest, inf where the smallest underflows to 0). ``fedavg`` is built from
    ``training``, the options IncFL shares."""
    try:
        federation = dirichlet_federation(train, args.clients, args.alpha, child_seed(seed, _FEDERATION), args.pool,
                                          validation_fraction=VALIDATION, min_size=args.min_size)
    except ValueError as error:  # a validation set missing a class of the pool, or no Dirichlet draw gave every
        # client --min-size samples (main checked the sizes)
        raise ValueError(f"--pool={args.pool}, --alpha={args.alpha} and --min-size={args.min_size}: {error}") from error
    subsets, p, validation = federation.clients, federation.label_distributions, federation.validation
    options = {} if args.hidden is None else {"hidden": tuple(args.hidden)}
    model = build_model(args.model, train.feature_shape, train.num_classes, seed, **options).to(args.device)
    init = get_params(model)
    local_seed = child_seed(seed, _LOCAL)
    local = train_local_models(model, init, subsets, args.local_epochs, args.batch_size, args.lr, local_seed)
    rho_val = np.array([distribution_losses(model, w, validation, p[[k]])[0] for k, w in enumerate(local)])
    own_test = np.array([client_scores(model, w, test, p[[k]], args.criterion)[0] for k, w in enumerate(local)])
    strategies = {
        "FedAvg": fedavg,
        "IncFL": IncFL(rho_val, lambda w: distribution_losses(model, w, validation, p), args.gap_scale, **training),
    }
    sign = 1.0 if args.criterion == "loss" else -1.0  # incentivised: a lower loss, or a higher accuracy
    out = {}
    for name, strategy in strategies.items():

        def trained_on(members: np.ndarray, strategy=strategy):
            """The test scores (``--criterion``), all k, of the model trained on the clients in ``members``."""
            result = run_federated(
                model, {k: subsets[k] for k in np.flatnonzero(members)}, strategy, args.rounds,
                seed=seed, init_params=init, progress=False, device=args.device,
                executor=VectorisedExecutor() if args.vectorised else None,
            )
            return client_scores(model, result.params, test, p, args.criterion), result

        scores, result = trained_on(np.ones(len(subsets), dtype=bool))
        share = incentivised_fraction(sign * scores, sign * own_test)
        out[name] = [share, evaluate(model, result.params, test)["accuracy"]]
        if name == "IncFL":
            gaps = distribution_losses(model, result.params, validation, p)
            weights = incentive_weights(gaps, rho_val, args.gap_scale)
            ratio = weights.max() / weights.min() if weights.min() > 0 else np.inf
            spread = (*np.quantile(gaps - rho_val, [0.05, 0.95]), ratio)
        if args.equilibrium:
            stays = participation_equilibrium(lambda m: trained_on(m)[0], own_test, higher_is_better=sign < 0)
            out[name].append(float(stays.participates.mean()))
    return out, spread


def client_scores(model, params, test: ArrayDataset, p: np.ndarray, criterion: str) -> np.ndarray:
    """(len(p),) each client's score of ``params`` on the test set reweighted to its label
    distribution: the loss f_k (nats) or the accuracy sum_c p_kc acc_c (fraction)."""
    if criterion == "loss":
        return distribution_losses(model, params, test, p)
    return accuracy_on_distribution(per_class_accuracy(model, params, test), p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist", "cifar10", "digits"), default="mnist")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding the dataset (not digits; default: ../shared/data beside the repository)")
    parser.add_argument(
        "--pool", type=integer(1), default=None, help="training samples used (default: 10000, digits all)"
    )
    parser.add_argument("--clients", type=integer(1), default=100)
    parser.add_argument("--alpha", type=positive, default=0.3)
    parser.add_argument("--min-size", type=integer(1), default=5, help="samples every client holds at least")
    parser.add_argument("--model", choices=MODEL_NAMES, default="mlp")
    parser.add_argument("--hidden", type=integer(1), nargs="*", default=None,
                        help="the MLP's hidden widths (default: the model's own; none: logistic regression)")
    parser.add_argument("--rounds", type=integer(1), default=30)
    parser.add_argument("--epochs", type=integer(1), default=1, help="local epochs per round")
    parser.add_argument("--fraction", type=share, default=1.0, help="share of clients sampled per round")
    parser.add_argument("--local-epochs", type=integer(1), default=20, help="epochs of each local-only model")
    parser.add_argument("--batch-size", type=integer(1), default=16)
    parser.add_argument("--lr", type=positive, default=0.1)
    parser.add_argument("--gap-scale", type=positive, default=1.0, help="IncFL's factor on the gap in the sigmoid")
    parser.add_argument("--fedavg-weighting", choices=("samples", "uniform"), default="samples",
                        help="FedAvg's weights: by sample (McMahan et al.) or one per client, as IncFL's count")
    parser.add_argument("--criterion", choices=("loss", "accuracy"), default="loss",
                        help="incentivised: the global model's test loss below the local model's, "
                             "or its accuracy above")
    parser.add_argument("--seeds", type=integer(0), nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--equilibrium", action="store_true", help="also iterate exit until nobody leaves")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models train")
    parser.add_argument("--vectorised", action="store_true",
                        help="train each round's clients with the vectorised executor (default: serial)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; allowed is --device cpu here")
    if args.hidden is not None and args.model != "mlp":
        parser.error(f"--hidden with --model={args.model}: allowed only with --model=mlp")
    training = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "fraction": args.fraction}
    try:
        fedavg = FedAvg(weighting=args.fedavg_weighting, **training)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(1)

    try:
        train, test = load_dataset(args.dataset, root=args.data_root)
    except DatasetNotFoundError as error:
        parser.error(f"--data-root={args.data_root!r}: {error}")
    if args.pool is None:
        args.pool = len(train) if args.dataset == "digits" else 10_000
    if args.pool > len(train):
        parser.error(f"--pool={args.pool}: allowed is 1 to {len(train)}")
    held, need = partition.holdout_size(args.pool, VALIDATION), args.clients * args.min_size
    if held < 1 or args.pool - held < need:
        parser.error(f"--pool={args.pool} with --clients={args.clients} and --min-size={args.min_size}: allowed is a "
                     f"pool that holds out {VALIDATION:.0%} for validation, at least 1 sample (here {held}), and keeps "
                     f"--clients x --min-size = {need} samples or more (here {args.pool - held})")
    print(
        f"{args.dataset}: {args.pool} samples, {args.clients} clients, Dirichlet({args.alpha}), "
        f"{args.rounds} rounds of {args.epochs} epoch(s), {args.fraction:.0%} of the clients per round, "
        f"local models {args.local_epochs} epochs, {args.model}"
        f"{'' if args.hidden is None else ' hidden ' + str(tuple(args.hidden))}, "
        f"IncFL gap scale {args.gap_scale}, FedAvg weighted by {args.fedavg_weighting}, incentivised by "
        f"{args.criterion}, on {args.device}"
    )
    columns = ["share", "acc"] + (["stays"] if args.equilibrium else [])
    header = " ".join(f"{name + ' ' + c:>12}" for name in ("FedAvg", "IncFL") for c in columns)
    print(f"{'seed':>4} {header} {'ratio':>6} {'s':>5}")
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        try:
            out, (low, high, ratio) = one_seed(train, test, args, seed, fedavg, training)
        except ValueError as error:  # e.g. no Dirichlet draw gives every client --min-size samples
            parser.error(str(error))
        rows.append(out["FedAvg"] + out["IncFL"])
        seconds = time.perf_counter() - start
        print(f"{seed:>4} {_cells(rows[-1])} {_ratio(rows[-1], len(columns)):>6.2f} {seconds:>5.0f}")
        weights = f"largest weight {ratio:.2f}x smallest" if np.isfinite(ratio) else (
            "the smallest weight underflows to 0 (largest / smallest beyond the float range)")
        print(f"     IncFL's final model: gaps {low:+.2f} to {high:+.2f} nats (5-95%), {weights}")
    mean = list(np.mean(rows, axis=0))
    print(f"mean {_cells(mean)} {_ratio(mean, len(columns)):>6.2f}")
    print("ratio: IncFL share / FedAvg share; the paper (Cho et al. 2022) reports 1.30-1.55")


def _cells(values: list[float]) -> str:
    return " ".join(f"{v:>12.3f}" for v in values)


def _ratio(row: list[float], width: int) -> float:
    """IncFL's share over FedAvg's (inf when only FedAvg's is 0, nan when both are)."""
    if row[0]:
        return row[width] / row[0]
    return float("inf") if row[width] else float("nan")


if __name__ == "__main__":
    main()
