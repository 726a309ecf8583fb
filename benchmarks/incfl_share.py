"""IncFL against FedAvg: the share of clients each one's global model incentivises.

The check of Cho et al. (2022), "To Federate or Not To Federate", who report that IncFL
incentivises 30-55% more clients than standard federated training. Per seed:

1. a pool of ``--pool`` training samples (all of them by default); a stratified fifth
   of it is held out as validation data, the rest is split among ``--clients`` clients
   by Dirichlet(``--alpha``) label skew; p_k is client k's label distribution;
2. client k's loss under a model w is f_k(w) = sum_c p_kc l_c(w), with l_c the mean
   cross-entropy on class c of the validation set (what the server's weights use) or of
   the test set (what is reported);
3. each client trains a local-only model w_hat_k (``--local-epochs`` epochs of SGD
   from the common initial model); rho_k = f_k(w_hat_k);
4. FedAvg and IncFL train from the same initial model, with the same clients, local
   epochs, batch size, step size and ``--rounds`` rounds (the same budget);
5. reported: the incentivised share mean_k 1{f_k(w) < rho_k} on test data for each,
   their ratio, and the global models' test accuracy.

Run from the repository root::

    python benchmarks/incfl_share.py                      # MNIST, 100 clients, seeds 0-4
    python benchmarks/incfl_share.py --dataset digits --clients 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fl.algorithms import FedAvg
from fl.algorithms.incfl import IncFL, distribution_losses, incentivised_fraction, train_local_models
from fl.data import partition
from fl.data.dataset import ArrayDataset, load_digits
from fl.data.mnist import load_mnist
from fl.models import build_model, get_params
from fl.server import run_federated


def federation(train: ArrayDataset, pool: int | None, clients: int, alpha: float, seed: int):
    """(client subsets, (N, K) label distributions, validation set) for one seed."""
    labels = train.labels()
    rng = np.random.default_rng(seed)
    indices = np.arange(len(labels)) if pool is None else rng.choice(len(labels), pool, replace=False)
    kept, held = partition.holdout(labels[indices], 0.2, seed)
    kept, held = indices[kept], indices[held]
    parts = partition.dirichlet(labels[kept], clients, alpha, seed, min_size=5)
    counts = partition.label_histograms(labels[kept], parts, train.num_classes)
    validation = ArrayDataset(f"{train.name}-validation", train.x[held], train.y[held], train.num_classes)
    return [train.subset(kept[p]) for p in parts], counts / counts.sum(axis=1, keepdims=True), validation


def one_seed(train: ArrayDataset, test: ArrayDataset, args: argparse.Namespace, seed: int) -> dict[str, tuple[float, float]]:
    """{"FedAvg" | "IncFL": (incentivised share on test data, test accuracy)}."""
    subsets, p, validation = federation(train, args.pool, args.clients, args.alpha, seed)
    model = build_model(args.model, train.feature_shape, train.num_classes, seed)
    init = get_params(model)
    local = train_local_models(model, init, subsets, args.local_epochs, args.batch_size, args.lr, seed)
    rho_val = np.array([distribution_losses(model, w, validation, p[k : k + 1])[0] for k, w in enumerate(local)])
    rho_test = np.array([distribution_losses(model, w, test, p[k : k + 1])[0] for k, w in enumerate(local)])
    training = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    strategies = {
        "FedAvg": FedAvg(**training),
        "IncFL": IncFL(rho_val, lambda w: distribution_losses(model, w, validation, p), **training),
    }
    out = {}
    for name, strategy in strategies.items():
        result = run_federated(
            model, subsets, strategy, args.rounds, seed=seed, test=test, init_params=init,
            progress=False, evaluate_every=args.rounds,
        )
        share = incentivised_fraction(distribution_losses(model, result.params, test, p), rho_test)
        out[name] = (share, result.history[-1].test_accuracy)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--data-root", default="../shared/data", help="folder holding mnist/ (MNIST only)")
    parser.add_argument("--pool", type=int, default=None, help="training samples used (default: all)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--local-epochs", type=int, default=20, help="epochs of each local-only model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, test = load_digits() if args.dataset == "digits" else load_mnist(root=args.data_root)
    print(f"{args.dataset}: {args.clients} clients, Dirichlet({args.alpha}), {args.rounds} rounds, {args.model}")
    print(f"{'seed':>4} {'FedAvg share':>12} {'IncFL share':>11} {'ratio':>6} {'FedAvg acc':>10} {'IncFL acc':>9} {'s':>5}")
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        out = one_seed(train, test, args, seed)
        (fa, fa_acc), (inc, inc_acc) = out["FedAvg"], out["IncFL"]
        rows.append((fa, inc, fa_acc, inc_acc))
        ratio = inc / fa if fa else float("inf")
        print(f"{seed:>4} {fa:>12.3f} {inc:>11.3f} {ratio:>6.2f} {fa_acc:>10.3f} {inc_acc:>9.3f} {time.perf_counter() - start:>5.0f}")
    fa, inc, fa_acc, inc_acc = np.mean(rows, axis=0)
    print(f"mean {fa:>12.3f} {inc:>11.3f} {inc / fa if fa else float('inf'):>6.2f} {fa_acc:>10.3f} {inc_acc:>9.3f}")
    print("paper (Cho et al. 2022): IncFL/FedAvg share ratio 1.30-1.55")


if __name__ == "__main__":
    main()
