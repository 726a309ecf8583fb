"""The small protocols that tie the economic world to mechanisms and to training.

``incentives`` defines them, ``mechanisms`` implements :class:`Mechanism`, and
``fl`` offers an :class:`AccuracyOracle` that satisfies the protocol structurally
(``fl`` never imports this module).

Units used throughout
---------------------
- contributions ``m_i``: number of training samples (float during solving, rounded
  to whole samples before training);
- accuracy ``a``: a fraction in [0, 1] (top-1 accuracy on the agent's own test
  distribution);
- costs ``c_i``: utility units per sample; values ``v_i``: utility units per unit of
  ``phi(accuracy)``; transfers ``t_i``: utility units, positive when paid to the agent.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # imported for annotations only, to keep this module import-light
    from incentives.accuracy import AccuracyModel
    from incentives.population import Population


@dataclass(frozen=True)
class Allocation:
    """What a mechanism's rules give each agent for a contribution profile.

    accuracy: (N,) accuracy each agent receives (the accuracy of the model delivered).
    transfer: (N,) money paid to each agent (negative when the agent pays).
    takes_part: (N,) whether the rule counts each agent in at its contribution, or None
        (everyone is). An agent it leaves out (a contract's agent whose contribution fills
        no item: it has signed nothing) gets its outside option, whatever it contributed.
    """

    accuracy: np.ndarray
    transfer: np.ndarray
    takes_part: np.ndarray | None = None


@dataclass(frozen=True)
class Outcome:
    """A solved mechanism: the equilibrium contributions and what each agent is promised.

    contributions: (N,) samples each agent contributes at the equilibrium.
    accuracy: (N,) accuracy each agent is promised (predicted by the accuracy model).
    transfer: (N,) money paid to each agent.
    delivery_target: (N,) accuracy the server should deliver to each agent (NaN: the
        global model; 0: no model at all), or ``None`` where every agent receives the
        full global model (no shaping). Either way an agent that does not take part
        receives nothing (:attr:`served_targets`).
    participates: (N,) whether each agent takes part (contributes or receives a model).
    info: mechanism-specific extras (total data, reserve prices, menu, ...).
    settings: the settings of the mechanism that solved it (:func:`settings_of`), which
        an audit holds the mechanism it is handed to; {} where none were kept.
    """

    mechanism: str
    contributions: np.ndarray
    accuracy: np.ndarray
    transfer: np.ndarray
    delivery_target: np.ndarray | None
    participates: np.ndarray
    info: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:  # a checkpoint written before outcomes kept their settings
        state.setdefault("settings", {})
        self.__dict__.update(state)

    @property
    def total(self) -> float:
        """Total contributed data M = sum_i m_i (samples)."""
        return float(np.sum(self.contributions))

    @property
    def served_targets(self) -> np.ndarray | None:
        """The targets training delivers: ``delivery_target`` with 0 (no model) for every
        agent not taking part; None (the global model for all) when everyone takes part
        and there is no target."""
        inside = np.asarray(self.participates, dtype=bool)
        if self.delivery_target is None and inside.all():
            return None
        target = np.full(inside.shape, np.nan) if self.delivery_target is None else np.asarray(
            self.delivery_target, dtype=float)
        return np.where(inside, target, 0.0)

    @property
    def receives_model(self) -> np.ndarray:
        """(N,) bool: the agents a model is delivered to, the participants whose target is
        not 0 (None or NaN: the global model)."""
        target = self.served_targets
        return np.asarray(self.participates, dtype=bool) if target is None else ~(target <= 0)


def settings_of(mechanism) -> dict:
    """A mechanism's settings: its public attributes, by name, copied (deep: a setting
    changed in place after the solve, a type grid's probabilities, changed the outcome's
    record of it too, and the audit accepted the changed mechanism); a value that cannot
    be copied is kept as it is."""
    settings = {}
    for name, value in vars(mechanism).items():
        if not name.startswith("_"):
            try:
                settings[name] = copy.deepcopy(value)
            except Exception:  # deepcopy raises many kinds for what it cannot copy
                settings[name] = value
    return settings


def changed_setting(settings: dict, solved_with: dict) -> str | None:
    """The first setting (by name) whose value in ``settings`` differs from the one in
    ``solved_with``; None where all agree. Values are compared with ==, and where that
    is not True (arrays and tuples of them, which have no single truth value; objects
    without value equality, such as an AccuracyValue, which a checkpoint's copy of an
    outcome holds another of) by their pickled bytes."""
    for name in sorted(set(settings) | set(solved_with)):
        now, then = settings.get(name), solved_with.get(name)
        try:
            same = bool(now == then)
        except (TypeError, ValueError):
            same = False
        if not same and not _pickled_alike(now, then):
            return name
    return None


def _pickled_alike(a, b) -> bool:
    """Whether ``a`` and ``b`` pickle to the same bytes (False where either does not pickle)."""
    try:
        return pickle.dumps(a) == pickle.dumps(b)
    except Exception:  # pickle raises many kinds for what it cannot pickle
        return False


@runtime_checkable
class Mechanism(Protocol):
    """A designer's rules.

    ``allocate`` is the rule itself (the game any equilibrium solver plays on);
    ``solve`` returns the equilibrium outcome under the rule, in closed form where
    the mechanism has one. A mechanism may also set ``aggregation``, the rule real
    training aggregates with for it (:meth:`AccuracyOracle.train`; "fedavg" when absent),
    and offer ``allocate_to(i, profiles (G, N), population, model)``: agent i's accuracy
    and transfer under G profiles at once, as an Allocation of (G,) arrays with the
    numbers of ``allocate``; the equilibrium solvers then value a best response's grid in
    one call (and compare it with ``allocate`` at three of its profiles, once per mechanism
    object). A rule that pays a step function of m_i may offer ``breakpoints(i,
    population, model)``, the contributions where agent i's payment steps up (a contract's
    items); the solvers' grids include them, as a step function's best point lies on one.

    Optional flags the loop and the audit read: ``uses_reported_costs`` (whether the rule
    uses costs the agents report, so that the audit checks misreports; undeclared, it is
    checked; False skips the check), ``linear_costs_only`` (True: the loop refuses a
    population with convex costs), ``include_local`` (False: the audit holds agents to
    their outside option alone, not to what they earn training alone).
    """

    name: str

    def allocate(
        self, contributions: np.ndarray, population: "Population", model: "AccuracyModel"
    ) -> Allocation: ...

    def solve(self, population: "Population", model: "AccuracyModel") -> Outcome: ...


@runtime_checkable
class TrainingOutcome(Protocol):
    """What one real training run reports back, per agent (arrays of shape (N,)).

    global_accuracy: accuracy of the full global model on each agent's test distribution.
    delivered_accuracy: accuracy of the model actually delivered to each agent (equal to
        ``global_accuracy`` where no delivery target was set).
    local_accuracy: accuracy of a model trained on the agent's own contribution alone,
        or ``None`` when not measured.
    round_games: when asked for (``record_rounds``), one coalition game per training round:
        ``.clients`` (the agents that trained that round) and ``.utility(coalition)`` (the
        validation accuracy of the model rebuilt from that coalition's updates); else None.
    """

    global_accuracy: np.ndarray
    delivered_accuracy: np.ndarray
    local_accuracy: np.ndarray | None
    round_games: list | None


@runtime_checkable
class AccuracyOracle(Protocol):
    """Real training, seen from the economic side.

    ``learning_curve`` trains on growing data sizes and returns the measured
    (size, accuracy) points used to fit the accuracy model a(m).
    ``train`` trains on exactly the samples each agent contributes and delivers to each
    agent a model of its target accuracy (``None``: the global model for everyone);
    ``record_rounds`` keeps each round's updates as coalition games (for data valuation);
    ``aggregation`` names the rule the server aggregates updates with ("fedavg", or
    "incfl": IncFL's weights, for a mechanism that declares it, see :class:`Mechanism`).
    An oracle may tell ``max_clients_per_round``, the most clients a round can have: the
    loop hands it, before any training, to each mechanism's ``check_rounds`` where there
    is one (a :class:`PaysFromTraining` mechanism whose valuation of rounds has limits).
    It may also tell ``aggregations``, the names ``train`` takes: the loop then checks each
    mechanism's ``aggregation`` against them before any training; ``endowments``, the
    (N,) samples it holds for each agent: the loop
    then checks, before any training, that the population has N agents none of whom
    holds more; and ``pool_size``, the most samples one ``learning_curve`` run can draw:
    the loop then checks its pilot sizes against it when it is built.
    """

    def learning_curve(self, sizes: Sequence[int], repeats: int) -> tuple[np.ndarray, np.ndarray]: ...

    def train(
        self,
        contributions: np.ndarray,
        delivery_target: np.ndarray | None,
        record_rounds: bool = False,
        aggregation: str = "fedavg",
    ) -> TrainingOutcome: ...


@runtime_checkable
class PaysFromTraining(Protocol):
    """A mechanism whose payments depend on what training measured (e.g. Shapley rewards
    paid by data values computed from the real rounds' updates). The loop asks the oracle
    to record rounds for it, and pays ``realised_transfer`` instead of the promised one."""

    def realised_transfer(self, outcome: Outcome, training: TrainingOutcome) -> np.ndarray: ...
