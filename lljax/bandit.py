"""A contextual-bandit simulation: Thompson sampling, UCB, greedy and random on the same users.

``python -m lljax.bandit --users 10000 --rounds 30`` prints the cumulative-regret table.

The world (hidden from the policies except through clicks), with ``D`` topics / item features:

- ``users`` users, each with a favourite topic ``k_u`` (uniform) and a hidden preference vector
  ``w_u = taste * e_{k_u} + N(0, preference_sd^2 I)``;
- ``items`` items with a feature vector ``z_i (D,)`` and a known popularity offset ``b_i`` (the
  score of an already trained fixed-effect model, given to the learner as the offset). A fraction
  ``mainstream_fraction`` of the items is *mainstream*: popular (``b_i ~ N(mainstream_offset,
  popularity_sd^2)``) and about equally liked by everyone (``z_i ~ N(0, feature_sd^2 I)``, small).
  The others are *niche*: less popular (``b_i ~ N(niche_offset, popularity_sd^2)``) and about one
  topic ``t_i`` (``z_i = e_{t_i} + N(0, feature_sd^2 I)``);
- a recommendation of item ``i`` to user ``u`` is clicked with probability
  ``p(u, i) = sigmoid(b_i + z_i . w_u)``: a niche item of the user's topic beats the mainstream ones.

Each round, ``requests`` distinct users drawn uniformly at random (default: every user) each make
one request with ``candidates`` distinct items drawn uniformly from the catalogue; the policy picks
one item per request; the clicks are observed; then the policy's model gets ONE
:meth:`RandomEffectModel.update` on that round's mini-batch (one row per request): logistic loss,
entity = user, features = the item's ``z`` (global ids ``0..D-1``), offset = ``b_i``,
``delta = 1`` (pure sequential Bayesian: the previous posterior is the whole prior), ``l2 = 1``
(the cold-start prior ``N(0, I)``), full precision. There is no intercept: a per-user bias shifts
all of a user's candidates equally, so it never changes which item is picked.

Policies (a policy's score of a candidate is ``b_i + z_i . theta_u``):

- ``thompson``: ``theta_u`` drawn from the posterior ``N(mean, P^-1)`` (one draw per request, shared
  by its candidates; :func:`~lljax.explore.scoring.thompson_candidates`), with a ``jax.random`` key split
  off per round;
- ``ucb``: ``b_i + z_i . mean + alpha sqrt(z_i^T P^-1 z_i)`` (:func:`~lljax.explore.scoring.ucb_candidates`);
- ``greedy``: ``b_i + z_i . mean`` (the posterior mean, no exploration);
- ``random``: a uniformly random candidate (no model).

Why exploration pays here: at first every model knows only the offsets, so greedy recommends
mainstream items, whose small features carry little information about the user's topic; it
learns the topic slowly and keeps paying the gap to the user's niche items. Thompson sampling and
UCB try niche items of other topics while uncertain, find the user's topic, then exploit it. With
the defaults (``D = 4``, 30 rounds), Thompson sampling ends below greedy and far below random;
UCB (``alpha = 1``) explores less and ends lowest. The effect depends on the world: with 8 topics
(``--features 8``) Thompson sampling pays for exploring every direction about as much as it gains,
and stays within about 1% of greedy over 120 rounds (500 users, seed 0); UCB stays lowest.

Common random numbers: the users, candidates and click uniforms of a round are drawn once from the
seed and shared by every policy (a click is ``uniform[request, candidate] < p``), so the policies
are compared on the same requests and the same luck: the comparison is paired.

Regret of a request is the expected-reward regret ``max_c p(u, c) - p(u, chosen)`` (no click noise);
the result holds its cumulative sum over requests after every round, per policy.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # imported where they are used (the module itself does not load JAX)
    import jax

    from lljax.model.random_effect import RandomEffectModel

__all__ = ["POLICIES", "BanditConfig", "BanditResult", "Environment", "checkpoints", "make_environment", "round_inputs",
           "simulate", "regret_table", "main"]

POLICIES = ("thompson", "ucb", "greedy", "random")


@dataclass(frozen=True)
class BanditConfig:
    """Parameters of one simulation (see the module docstring for the model).

    Attributes:
      users: number of users ``U``.
      items: catalogue size ``I``.
      features: item features (= topics) ``D``.
      candidates: items offered per request ``C`` (``<= items``).
      rounds: number of rounds ``T``.
      requests: requests (distinct users) per round; ``None``: every user, every round.
      taste: weight of a user's favourite topic in ``w_u``.
      preference_sd: standard deviation of the rest of ``w_u``.
      feature_sd: standard deviation of the items' generic features.
      mainstream_fraction: share of mainstream items.
      mainstream_offset, niche_offset, popularity_sd: popularity offsets ``b_i`` of the two kinds.
      ucb_alpha: UCB's width multiplier.
      thompson_scale: Thompson sampling draws from ``N(mean, scale^2 P^-1)``.
      l2: cold-start prior precision (and L2 weight) of the model.
      seed: seed of everything (world, requests, clicks, policy randomness).
    """

    users: int = 10_000
    items: int = 1_000
    features: int = 4
    candidates: int = 20
    rounds: int = 30
    requests: int | None = None
    taste: float = 3.0
    preference_sd: float = 0.5
    feature_sd: float = 0.15
    mainstream_fraction: float = 0.2
    mainstream_offset: float = -0.5
    niche_offset: float = -2.0
    popularity_sd: float = 0.5
    ucb_alpha: float = 1.0
    thompson_scale: float = 1.0
    l2: float = 1.0
    seed: int = 0

    @property
    def requests_per_round(self) -> int:
        return self.users if self.requests is None else self.requests

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field of an impossible setting."""
        checks = [
            ("users", self.users >= 1, "must be >= 1"),
            ("items", self.items >= 1, "must be >= 1"),
            ("features", self.features >= 1, "must be >= 1"),
            ("candidates", 1 <= self.candidates <= self.items, f"must be in [1, items={self.items}]"),
            ("rounds", self.rounds >= 1, "must be >= 1"),
            ("requests", 1 <= self.requests_per_round <= self.users, f"must be None or in [1, users={self.users}]"),
            ("l2", self.l2 > 0, "must be > 0 (the cold-start prior needs a finite variance)"),
        ]
        for field, ok, reason in checks:
            if not ok:
                raise ValueError(f"field {field!r}: value {getattr(self, field)!r} {reason}")


class Environment(NamedTuple):
    """The hidden world.

    Attributes:
      preferences: ``(U, D)`` hidden user preference vectors ``w_u``.
      item_features: ``(I, D)`` item feature vectors ``z_i``.
      item_offset: ``(I,)`` known popularity offsets ``b_i``.
    """

    preferences: np.ndarray
    item_features: np.ndarray
    item_offset: np.ndarray

    def click_probability(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``p(u, i) = sigmoid(b_i + z_i . w_u)`` for ``users (S,)`` and ``items (S, C)``: ``(S, C)``."""
        margin = self.item_offset[items] + np.einsum("scd,sd->sc", self.item_features[items], self.preferences[users])
        return 1.0 / (1.0 + np.exp(-margin))


def make_environment(config: BanditConfig) -> Environment:
    """Draw the world from ``config.seed`` (independently of the requests and clicks)."""
    rng = np.random.default_rng([config.seed, 0])
    D, n_items, n_users = config.features, config.items, config.users
    eye = np.eye(D)
    preferences = (config.taste * eye[rng.integers(0, D, n_users)]
                   + rng.normal(0.0, config.preference_sd, (n_users, D)))
    mainstream = rng.random(n_items) < config.mainstream_fraction
    topic = np.where(mainstream[:, None], 0.0, eye[rng.integers(0, D, n_items)])
    item_features = topic + rng.normal(0.0, config.feature_sd, (n_items, D))
    item_offset = (np.where(mainstream, config.mainstream_offset, config.niche_offset)
                   + rng.normal(0.0, config.popularity_sd, n_items))
    return Environment(preferences, item_features, item_offset)


def round_inputs(config: BanditConfig, round_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The requests of one round, identical for every policy (common random numbers).

    Returns:
      ``users (S,)`` distinct requesting users (sorted), ``items (S, C)`` distinct candidate items
      per request, and ``uniforms (S, C)``: candidate ``c`` of request ``s`` is clicked if chosen
      and ``uniforms[s, c] < p``.
    """
    rng = np.random.default_rng([config.seed, 1, round_index])
    S, C = config.requests_per_round, config.candidates
    users = np.arange(config.users) if S == config.users else np.sort(rng.choice(config.users, S, replace=False))
    # C distinct items per request: the C smallest of random keys (no Python loop).
    if C == config.items:
        items = np.argsort(rng.random((S, config.items)), axis=1)
    else:
        items = np.argpartition(rng.random((S, config.items)), C - 1, axis=1)[:, :C]
    uniforms = rng.random((S, C))
    return users, items, uniforms


class BanditResult(NamedTuple):
    """Outcome of :func:`simulate`.

    Attributes:
      config: the parameters.
      policies: names of the simulated policies.
      regret: ``{policy: (T,)}`` cumulative expected regret (summed over requests) after each round.
      reward: ``{policy: (T,)}`` cumulative clicks after each round.
      oracle_reward: ``(T,)`` cumulative expected clicks of the best candidate (for scale).
      seconds: ``{policy: {"select": s, "update": s}}`` wall time spent choosing (posterior + scoring)
        and in ``Dataset.from_arrays`` + ``update``, after the warm-up.
      compile_seconds: wall time of the warm-up that compiles a round's shapes before the timed rounds.
      total_seconds: wall time of the whole simulation.
    """

    config: BanditConfig
    policies: tuple[str, ...]
    regret: dict[str, np.ndarray]
    reward: dict[str, np.ndarray]
    oracle_reward: np.ndarray
    seconds: dict[str, dict[str, float]]
    compile_seconds: float
    total_seconds: float

    def to_json(self) -> dict:
        """A JSON-serializable dict of everything."""
        return {
            "config": asdict(self.config),
            "policies": list(self.policies),
            "cumulative_regret": {p: self.regret[p].tolist() for p in self.policies},
            "cumulative_reward": {p: self.reward[p].tolist() for p in self.policies},
            "cumulative_oracle_reward": self.oracle_reward.tolist(),
            "seconds": self.seconds,
            "compile_seconds": self.compile_seconds,
            "total_seconds": self.total_seconds,
        }


def _choose(policy: str, model: RandomEffectModel | None, key: jax.Array, users: np.ndarray, features: np.ndarray,
            offset: np.ndarray, config: BanditConfig, rng: np.random.Generator) -> np.ndarray:
    """``(S,)`` index of the chosen candidate of each request.

    Args:
      features: ``(S, C, D)`` candidate item features; offset: ``(S, C)`` their popularity offsets.
    """
    from lljax.explore.scoring import candidate_moments, thompson_candidates, ucb_candidates

    S, C, D = features.shape
    if policy == "random":
        return rng.integers(0, C, (S,))
    assert model is not None, "every policy but random has a model"
    # This model has no intercept (trained with intercept_id=None): feature 0 is the first item feature, not an
    # intercept column, so the candidates are given with all D columns and no column is marked.
    posterior = model.posterior(users, np.arange(D))._replace(intercept=None)
    rows = np.arange(S)
    if policy == "thompson":
        scores = thompson_candidates(key, posterior, rows, features, config.thompson_scale)
    elif policy == "ucb":
        scores = ucb_candidates(posterior, rows, features, config.ucb_alpha)
    elif policy == "greedy":
        scores = candidate_moments(posterior, rows, features)[0]
    else:
        raise ValueError(f"field 'policy': value {policy!r} is not one of {POLICIES}")
    return np.argmax(np.asarray(scores) + offset, axis=1)


def _warm_up(config: BanditConfig, dtype: npt.DTypeLike, policies: tuple[str, ...]) -> None:
    """Compile what a round runs (an update of ``S`` users x 1 row x ``D`` features, and the scoring
    of ``(S, C, D)`` candidates) on dummy data, so that the timed rounds exclude compilation."""
    import jax

    from lljax.data.dataset import Dataset
    from lljax.model.random_effect import RandomEffectModel

    S, C, D = config.requests_per_round, config.candidates, config.features
    users = np.arange(S)
    model = RandomEffectModel("logistic", l2=config.l2, delta=1.0, hessian="full")
    model.update(Dataset.from_arrays(users, np.zeros(S, dtype), X=np.ones((S, D)), offset=np.zeros(S),
                                     intercept_id=None, dtype=dtype))
    for policy in policies:
        _choose(policy, model, jax.random.key(0), users, np.ones((S, C, D)), np.zeros((S, C)), config,
                np.random.default_rng(0))


def simulate(config: BanditConfig = BanditConfig(), policies: tuple[str, ...] = POLICIES, *,
             verbose: bool = False) -> BanditResult:
    """Run every policy for ``config.rounds`` rounds on the same requests; see the module docstring.

    The policies run in lockstep, round by round, each with its own :class:`RandomEffectModel`.
    The model's dtype follows JAX's: float64 when ``jax_enable_x64`` is on, else float32.
    """
    import jax

    from lljax.data.dataset import Dataset
    from lljax.model.random_effect import RandomEffectModel
    from lljax.solve.dtypes import x64_enabled

    config.validate()
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"field 'policies': value {unknown or policies!r} must be a non-empty subset of {POLICIES}")
    started = time.perf_counter()
    dtype = np.float64 if x64_enabled() else np.float32
    _warm_up(config, dtype, policies)
    compile_seconds = time.perf_counter() - started
    env = make_environment(config)
    T = config.rounds
    models = {p: RandomEffectModel("logistic", l2=config.l2, delta=1.0, hessian="full")
              for p in policies if p != "random"}
    policy_rng = np.random.default_rng([config.seed, 2])
    key = jax.random.key(config.seed)
    regret = {p: np.zeros(T) for p in policies}
    reward = {p: np.zeros(T) for p in policies}
    oracle = np.zeros(T)
    seconds = {p: {"select": 0.0, "update": 0.0} for p in policies}
    for r in range(T):
        key, round_key = jax.random.split(key)
        users, items, uniforms = round_inputs(config, r)
        p_click = env.click_probability(users, items)
        best = p_click.max(axis=1)
        oracle[r] = best.sum()
        features, offset = env.item_features[items], env.item_offset[items]
        rows = np.arange(len(users))
        for policy in policies:
            t = time.perf_counter()
            chosen = _choose(policy, models.get(policy), round_key, users, features, offset, config, policy_rng)
            seconds[policy]["select"] += time.perf_counter() - t
            clicks = (uniforms[rows, chosen] < p_click[rows, chosen]).astype(dtype)
            regret[policy][r] = (best - p_click[rows, chosen]).sum()
            reward[policy][r] = clicks.sum()
            if policy in models:
                t = time.perf_counter()
                batch = Dataset.from_arrays(users, clicks, X=features[rows, chosen], offset=offset[rows, chosen],
                                            intercept_id=None, dtype=dtype)
                models[policy].update(batch)
                seconds[policy]["update"] += time.perf_counter() - t
        if verbose:
            print(f"round {r + 1}/{T}: " + ", ".join(f"{p} {regret[p][: r + 1].sum():,.1f}" for p in policies),
                  flush=True)
    return BanditResult(config, tuple(policies), {p: np.cumsum(regret[p]) for p in policies},
                        {p: np.cumsum(reward[p]) for p in policies}, np.cumsum(oracle), seconds, compile_seconds,
                        time.perf_counter() - started)


def checkpoints(rounds: int, count: int = 6) -> list[int]:
    """About ``count`` round numbers (1-based) spread over ``1..rounds``, the last one included."""
    return sorted({max(1, int(round(rounds * k / count))) for k in range(1, count + 1)} | {1})


def regret_table(result: BanditResult, rounds: list[int] | None = None) -> str:
    """Cumulative regret per request (rows: rounds; columns: policies), then totals and timings."""
    rounds = rounds or checkpoints(result.config.rounds)
    S = result.config.requests_per_round
    width = max(12, *(len(p) + 2 for p in result.policies))
    lines = [f"mean expected regret per request over rounds 1..t (cumulative regret / (t x {S:,} requests)); "
             "lower is better",
             f"{'round':>6}" + "".join(f"{p:>{width}}" for p in result.policies)]
    lines.append("-" * len(lines[-1]))
    for t in rounds:
        lines.append(f"{t:>6}" + "".join(f"{result.regret[p][t - 1] / (t * S):>{width}.4f}" for p in result.policies))
    T = result.config.rounds
    lines.append("-" * len(lines[1]))
    lines.append(f"{'total':>6}" + "".join(f"{result.regret[p][-1]:>{width},.1f}" for p in result.policies)
                 + "   (cumulative regret, all requests)")
    lines.append(f"{'CTR':>6}" + "".join(f"{result.reward[p][-1] / (T * S):>{width}.4f}" for p in result.policies)
                 + f"   (oracle expected CTR {result.oracle_reward[-1] / (T * S):.4f})")
    lines.append(f"{'sel s':>6}" + "".join(f"{result.seconds[p]['select']:>{width}.2f}" for p in result.policies)
                 + "   (seconds choosing, all rounds)")
    lines.append(f"{'upd s':>6}" + "".join(f"{result.seconds[p]['update']:>{width}.2f}" for p in result.policies)
                 + "   (seconds in Dataset + model.update, all rounds)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = BanditConfig()
    parser = argparse.ArgumentParser(prog="python -m lljax.bandit", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--items", type=int, default=defaults.items)
    parser.add_argument("--features", type=int, default=defaults.features)
    parser.add_argument("--candidates", type=int, default=defaults.candidates)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--requests", type=int, default=None, help="requests per round (default: every user)")
    parser.add_argument("--ucb-alpha", type=float, default=defaults.ucb_alpha)
    parser.add_argument("--thompson-scale", type=float, default=defaults.thompson_scale)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of the policies")
    parser.add_argument("--float32", action="store_true", help="simulate in float32 (default: float64)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    args = parser.parse_args(argv)

    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)  # a script may; the library never does
    config = BanditConfig(users=args.users, items=args.items, features=args.features, candidates=args.candidates,
                          rounds=args.rounds, requests=args.requests, ucb_alpha=args.ucb_alpha,
                          thompson_scale=args.thompson_scale, seed=args.seed)
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    print(f"bandit: {config.users:,} users, {config.items:,} items x {config.features} features, "
          f"{config.candidates} candidates/request, {config.requests_per_round:,} requests/round, "
          f"{config.rounds} rounds, seed {config.seed} | jax {jax.__version__} on {jax.default_backend()}")
    result = simulate(config, policies, verbose=not args.quiet)
    print(regret_table(result))
    print(f"warm-up (compilation) {result.compile_seconds:.1f}s, total wall time {result.total_seconds:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
