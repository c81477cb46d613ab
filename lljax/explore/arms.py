"""A MABWiser-style contextual bandit over labelled arms: one Bayesian linear (or logistic) model per arm.

:class:`LinearArms` speaks MABWiser's ``MAB(arms, LearningPolicy.LinTS / LinUCB / LinGreedy)`` idiom: arm
labels in and out (any hashable: strings, ints), ``fit`` / ``partial_fit`` on ``(decisions, rewards,
contexts)``, ``predict`` and ``predict_expectations`` for new contexts. Underneath, every arm is an entity of a
:class:`RandomEffectModel` (all arms trained at once) and scoring is :func:`ucb_arms` / :func:`thompson_arms`.

Differences from MABWiser, each on purpose:

- **The intercept is added for you**: contexts are your features only; every arm's model has an intercept
  (feature 0). MABWiser's ``Lin*`` policies use the context as given (add a column of ones there to compare).
- **An offset** for the fixed-effect score: ``fit(..., offset=)`` (one per training row) and ``predict(...,
  offset=)`` (one per context, or one per context and arm) add it to each arm's margin.
- **partial_fit** is the sequential Bayesian update (forgetting factor ``delta``; 1 keeps everything, and
  for the linear loss equals refitting on all the data, as MABWiser's ridge does).
- ``loss="logistic"`` gives per-arm Bayesian logistic regression (Laplace posterior) for 0/1 rewards.

With ``loss="linear"``, ``l2=λ`` and full precision, each arm's posterior is MABWiser's ridge regression:
mean ``β = (XᵀX + λI)⁻¹Xᵀ(y - offset)``, precision ``A = XᵀX + λI``; ``policy="ucb"`` scores
``x·β + α √(xᵀA⁻¹x)`` (MABWiser's LinUCB), ``"thompson"`` draws ``x·θ`` with ``θ ~ N(β, α² A⁻¹)``
(MABWiser's LinTS), ``"greedy"`` scores ``x·β``. An arm with no data has the prior ``N(0, I/λ)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import jax
import numpy as np

from lljax.data.dataset import Dataset
from lljax.data.errors import input_error
from lljax.explore.scoring import arm_moments, thompson_arms, ucb_arms
from lljax.model.random_effect import RandomEffectModel

__all__ = ["LinearArms", "POLICIES"]

POLICIES = ("thompson", "ucb", "greedy")


class LinearArms:
    """A contextual bandit over labelled arms, one Bayesian GLM per arm (see the module docstring).

    Args:
      arms: the arm labels (distinct, hashable).
      policy: ``"thompson"`` (default), ``"ucb"`` or ``"greedy"``.
      alpha: exploration scale: UCB's width multiplier, Thompson's posterior standard-deviation scale.
      l2: prior precision of every coefficient (MABWiser's ``l2_lambda``).
      loss: ``"linear"`` (default) or ``"logistic"`` (0/1 rewards).
      delta: forgetting factor of :meth:`partial_fit` (1: keep everything).
      hessian: ``"full"`` (default) or ``"diagonal"`` posterior precision per arm.
      tol: the solver's tolerance on the gradient (default: :class:`RandomEffectModel`'s).
      seed: seed of the ``jax.random`` key for Thompson sampling (each prediction call splits it).
    """

    def __init__(self, arms: Sequence[Hashable], policy: str = "thompson", *, alpha: float = 1.0, l2: float = 1.0,
                 loss: str = "linear", delta: float = 1.0, hessian: str = "full", tol: float | None = None,
                 seed: int = 0):
        if policy not in POLICIES:
            raise input_error("policy", policy, f"must be one of {list(POLICIES)}")
        if loss not in ("linear", "logistic"):
            raise input_error("loss", loss, "must be 'linear' or 'logistic'")
        if hessian not in ("full", "diagonal"):
            raise input_error("hessian", hessian, "must be 'full' or 'diagonal' (exploration needs a precision)")
        if not (isinstance(alpha, (int, float)) and alpha >= 0):
            raise input_error("alpha", alpha, "must be a number >= 0")
        self.policy, self.alpha, self.loss = policy, float(alpha), loss
        self.model = RandomEffectModel(loss, l2=l2, delta=delta, hessian=hessian, tol=tol)
        self._key = jax.random.key(seed)
        self._code: dict[Hashable, int] = {}
        self.arms: list[Hashable] = []
        self.num_features: int | None = None
        for arm in arms:
            self.add_arm(arm)

    def __repr__(self) -> str:
        return (f"LinearArms(arms={self.arms!r}, policy={self.policy!r}, alpha={self.alpha}, loss={self.loss!r}, "
                f"l2={self.model.l2})")

    # -- arms ---------------------------------------------------------------------------------------------

    def add_arm(self, arm: Hashable) -> None:
        """Add an arm (cold: its prior ``N(0, I/l2)``); ``ValueError`` if it is already an arm."""
        try:
            known = arm in self._code
        except TypeError:
            raise input_error("arm", repr(arm), "must be hashable", error=TypeError) from None
        if known and arm in self.arms:
            raise input_error("arm", arm, "is already an arm")
        if not known:
            self._code[arm] = len(self._code)
        self.arms.append(arm)

    def remove_arm(self, arm: Hashable) -> None:
        """Stop recommending ``arm`` (its model is kept: adding it back restores it)."""
        if arm not in self.arms:
            raise input_error("arm", arm, f"is not an arm (arms: {self.arms!r})")
        self.arms.remove(arm)

    # -- training -------------------------------------------------------------------------------------------

    def fit(self, decisions: Sequence[Hashable], rewards: Any, contexts: Any, offset: Any = None) -> LinearArms:
        """Train every arm afresh on the rows where it was the decision; returns ``self``."""
        old = self.model
        self.model = RandomEffectModel(self.loss, l2=old.l2, delta=old.delta, hessian=old.hessian, tol=old.tol)
        self.num_features = None
        return self.partial_fit(decisions, rewards, contexts, offset)

    def partial_fit(self, decisions: Sequence[Hashable], rewards: Any, contexts: Any,
                    offset: Any = None) -> LinearArms:
        """One sequential Bayesian update of the arms that appear in ``decisions``; returns ``self``.

        ``decisions (n,)``: arm labels; ``rewards (n,)``; ``contexts (n, D)`` (no intercept column);
        ``offset (n,)``: each row's fixed-effect score (default 0)."""
        x = self._contexts(contexts, "contexts")
        decisions = list(decisions)
        if len(decisions) != len(x):
            raise input_error("decisions", f"<{len(decisions)} decisions>", f"must match the {len(x)} contexts")
        codes = np.empty(len(decisions), np.int64)
        for i, arm in enumerate(decisions):
            if arm not in self.arms:
                raise input_error("decisions", arm, f"is not an arm (arms: {self.arms!r})", where=f"row {i}")
            codes[i] = self._code[arm]
        data = Dataset.from_arrays(codes, np.asarray(rewards, np.float64), X=x, offset=offset)
        self.model.update(data)
        return self

    # -- prediction ---------------------------------------------------------------------------------------------

    def scores(self, contexts: Any, offset: Any = None) -> np.ndarray:
        """``(R, A)`` policy scores of every arm (in :attr:`arms` order) for each context, offsets added."""
        x = self._contexts(contexts, "contexts", fitting=False)
        R, A = x.shape[0], len(self.arms)
        if A == 0:
            raise input_error("arms", "[]", "is empty: add an arm first")
        D = x.shape[1]
        post = self.model.posterior(np.array([self._code[a] for a in self.arms]), np.arange(D + 1))
        if self.policy == "ucb":
            device_scores = ucb_arms(post, x, self.alpha)
        elif self.policy == "thompson":
            self._key, key = jax.random.split(self._key)
            device_scores = thompson_arms(key, post, x, scale=self.alpha)
        else:
            device_scores = arm_moments(post, x)[0]
        scores = np.asarray(device_scores, np.float64)
        if offset is not None:
            off = np.asarray(offset, np.float64)
            if off.shape not in ((R,), (R, A)):
                raise input_error("offset", f"<array of shape {off.shape}>", f"must have shape ({R},) or ({R}, {A})")
            scores = scores + (off[:, None] if off.ndim == 1 else off)
        return scores

    def predict(self, contexts: Any, offset: Any = None) -> list[Hashable]:
        """The arm with the best policy score for each context (a list of labels, one per context)."""
        best = np.argmax(self.scores(contexts, offset), axis=1)
        return [self.arms[i] for i in best.tolist()]

    def predict_expectations(self, contexts: Any, offset: Any = None) -> list[dict[Hashable, float]]:
        """Each context's ``{arm: policy score}`` (MABWiser's ``predict_expectations``, one dict per context)."""
        scores = self.scores(contexts, offset)
        return [dict(zip(self.arms, row)) for row in scores.tolist()]

    def _contexts(self, contexts: Any, name: str, fitting: bool = True) -> np.ndarray:
        x = np.asarray(contexts, dtype=np.float64)
        if x.ndim != 2:
            raise input_error(name, f"<array of shape {x.shape}>", "must be two-dimensional (rows, features), "
                              "without an intercept column (it is added)")
        if self.num_features is None:
            if fitting:
                self.num_features = x.shape[1]
        elif x.shape[1] != self.num_features:
            raise input_error(name, f"<array of shape {x.shape}>", f"must have {self.num_features} columns, as in "
                              "training (no intercept column: it is added)")
        return x
