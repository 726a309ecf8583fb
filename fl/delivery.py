"""Deliver to one agent a model of a target accuracy, by mixing the global model with a weak one.

Along the segment theta(lam) = lam * theta_global + (1 - lam) * theta_weak, lam in [0, 1]
(theta_weak: e.g. the untrained initial model, accuracy near chance), the agent's
accuracy a(lam) = sum_k p_k acc_k(theta(lam)) on a validation set goes from a(0) to the
global model's a(1). Bisection on lam finds a crossing of the target. a(lam) need not
be monotone (the loss surface between two points is not convex), so the crossing
found is one of possibly several, and a(lam) is a step function (the validation set is
finite): the delivered accuracy lands within about one step of the target. Accuracy
is then measured on the agent's test distribution by the caller.

Targets at or above a(1) get the global model (lam = 1); targets at or below a(0) get
the weak model (lam = 0), the least the path offers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl.checks import as_floats, check_distributions, check_integer, check_nonnegative, check_unit
from fl.data.dataset import ArrayDataset
from fl.evaluation import accuracy_on_distribution, per_class_accuracy
from fl.models import Params, check_params


@dataclass(frozen=True)
class Delivery:
    """params: the delivered model; lam: its weight on the global model;
    validation_accuracy: a(lam), on the agent's distribution; target: as asked (None: global)."""

    params: Params
    lam: float
    validation_accuracy: float
    target: float | None


def interpolate(global_params: Params, weak_params: Params, lam: float) -> Params:
    """lam * global + (1 - lam) * weak for floating-point entries; others come from the global model."""
    return {
        name: torch.lerp(weak_params[name], value, lam) if value.is_floating_point() else value
        for name, value in global_params.items()
    }


class DeliveryPath:
    """The segment theta(lam) between ``global_params`` (lam = 1) and ``weak_params``
    (lam = 0), scored on ``validation``: the per-class accuracy of each point is computed
    once and kept (K numbers a point, not the model), so that serving many agents costs
    one evaluation per distinct lam instead of one per agent and step: their bisections
    share the endpoints and the first halvings (lam = 1/2, 1/4, 3/4, ...). A path scored
    on a test set instead reads the test accuracy of the points delivered, once each.
    ValueError unless both models match ``model``'s state (``fl.models.check_params``) and
    ``validation`` is an ArrayDataset."""

    def __init__(self, model: nn.Module, global_params: Params, weak_params: Params, validation: ArrayDataset):
        check_params("global_params", global_params, model)
        check_params("weak_params", weak_params, model)
        if not isinstance(validation, ArrayDataset):
            raise ValueError(f"validation (a {type(validation).__name__}): allowed is an ArrayDataset, the set the "
                             "path is scored on")
        self.model, self.global_params, self.weak_params = model, global_params, weak_params
        self.validation = validation
        self._per_class: dict[float, np.ndarray] = {}

    def params(self, lam: float) -> Params:
        """theta(lam); the global model itself at lam = 1."""
        return self.global_params if lam == 1.0 else interpolate(self.global_params, self.weak_params, lam)

    def accuracy(self, lam: float, label_distribution: np.ndarray) -> float | np.ndarray:
        """a(lam): theta(lam)'s accuracy on the path's scoring set (``validation``) reweighted
        to ``label_distribution`` (K,), or to each row of (N, K) distributions (then (N,));
        NaN where the set holds no sample of a class the distribution weighs."""
        if lam not in self._per_class:
            self._per_class[lam] = per_class_accuracy(self.model, self.params(lam), self.validation)
        return accuracy_on_distribution(self._per_class[lam], label_distribution)

    def deliver(self, label_distribution: np.ndarray, target: float | None, tolerance: float = 0.005,
                max_steps: int = 30) -> Delivery:
        """The point whose validation accuracy on ``label_distribution`` (one agent's, (K,))
        is closest to ``target`` (fraction in [0, 1]), found by bisection until within
        ``tolerance`` (a number >= 0) or after ``max_steps`` (an integer >= 0) halvings."""
        check_unit("target", target, optional=True)
        check_nonnegative("tolerance", tolerance)
        check_integer("max_steps", max_steps, least=0)
        classes = self.validation.num_classes
        allowed = f"one agent's distribution over the {classes} classes, of shape ({classes},)"
        p = as_floats("label_distribution", label_distribution, allowed)
        if p.shape != (classes,):
            raise ValueError(f"label_distribution (shape {p.shape}): allowed is {allowed}")
        check_distributions("label_distribution", p)
        top = self.accuracy(1.0, p)
        if np.isnan(top):
            raise ValueError(
                f"validation ({len(self.validation)} samples): allowed is a set holding every class that "
                "label_distribution weighs; it holds none of some, so no accuracy can be targeted on it"
            )
        if target is None or target >= top:
            return Delivery(self.global_params, 1.0, top, target)
        bottom = self.accuracy(0.0, p)
        if target <= bottom:
            return Delivery(self.params(0.0), 0.0, bottom, target)
        low, high = 0.0, 1.0  # invariant: a(low) < target <= a(high)
        best_lam, best = min((0.0, bottom), (1.0, top), key=lambda point: abs(point[1] - target))
        for _ in range(max_steps):
            mid = 0.5 * (low + high)
            value = self.accuracy(mid, p)
            if abs(value - target) < abs(best - target):
                best_lam, best = mid, value
            if abs(value - target) <= tolerance:
                break
            low, high = (mid, high) if value < target else (low, mid)
        return Delivery(self.params(best_lam), best_lam, best, target)


def deliver(
    model: nn.Module,
    global_params: Params,
    weak_params: Params,
    validation: ArrayDataset,
    label_distribution: np.ndarray,
    target: float | None,
    tolerance: float = 0.005,
    max_steps: int = 30,
) -> Delivery:
    """The model on the global-weak segment whose validation accuracy on
    ``label_distribution`` is closest to ``target`` (fraction in [0, 1]), found by
    bisection until within ``tolerance`` or after ``max_steps`` halvings (one agent's
    :meth:`DeliveryPath.deliver`; serving many, build the path once)."""
    path = DeliveryPath(model, global_params, weak_params, validation)
    return path.deliver(label_distribution, target, tolerance, max_steps)
