"""Bandit simulation benchmark: cumulative regret of Thompson sampling, UCB, greedy and random.

Runs :func:`lljax.bandit.simulate` (see ``lljax/bandit.py`` for the world and the policies) with
``--users`` users (default 10,000; every user makes one request per round), ``--rounds`` rounds,
all four policies on the same seed (common random numbers: same users, candidates and click
uniforms for every policy). Each policy's model gets one ``RandomEffectModel.update`` per round
(logistic, ``delta=1``, ``l2=1``, full precision, float64).

Prints the regret table (rounds as rows at a few checkpoints, policies as columns), writes JSON
(``--out``) and, if matplotlib is installed, a plot of mean regret per request vs round next to it.
Run: ``python benchmarks/bench_bandit.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark may; the library never does

import numpy as np  # noqa: E402
from _common import machine_info, write_json  # noqa: E402

import lljax  # noqa: E402
from lljax.bandit import POLICIES, BanditConfig, checkpoints, regret_table, simulate  # noqa: E402


def plot(result, path: Path) -> bool:
    """Mean regret per request up to each round, one line per policy; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    S = result.config.requests_per_round
    t = np.arange(1, result.config.rounds + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in result.policies:
        ax.plot(t, result.regret[p] / (t * S), label=p)
    ax.set_xlabel("round")
    ax.set_ylabel("mean expected regret per request (rounds 1..t)")
    ax.set_title(f"{result.config.users:,} users, {result.config.candidates} candidates, D={result.config.features}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    defaults = BanditConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--items", type=int, default=defaults.items)
    parser.add_argument("--features", type=int, default=defaults.features)
    parser.add_argument("--candidates", type=int, default=defaults.candidates)
    parser.add_argument("--ucb-alpha", type=float, default=defaults.ucb_alpha)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_bandit.json"))
    args = parser.parse_args(argv)
    config = BanditConfig(users=args.users, rounds=args.rounds, items=args.items, features=args.features,
                          candidates=args.candidates, ucb_alpha=args.ucb_alpha, seed=args.seed)
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()

    result = simulate(config, POLICIES)

    print(f"lljax {lljax.__version__} | jax {jax.__version__} on {jax.default_backend()} | {os.cpu_count()} CPUs | "
          f"float64 | {config.users:,} users x {config.rounds} rounds, {config.items:,} items, "
          f"{config.candidates} candidates/request, D={config.features}, seed {config.seed}")
    print(regret_table(result))
    final = {p: float(result.regret[p][-1]) for p in POLICIES}
    print(f"Thompson's final cumulative regret vs greedy: {final['thompson'] / final['greedy']:.3f}x, "
          f"vs random: {final['thompson'] / final['random']:.3f}x, vs UCB: {final['thompson'] / final['ucb']:.3f}x")
    updates = sum(1 for p in POLICIES if p != "random") * config.rounds
    update_s = sum(result.seconds[p]["update"] for p in POLICIES)
    print(f"{updates} model updates of {config.requests_per_round:,} users each: {update_s / updates:.3f}s per update "
          f"(Dataset + update); warm-up/compilation {result.compile_seconds:.1f}s; "
          f"total {result.total_seconds:.1f}s")
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f}")

    record = {
        "benchmark": "bench_bandit",
        "started_utc": started.isoformat(),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": machine_info(load_before),
        "checkpoints": checkpoints(config.rounds),
        "mean_regret_per_request_at_checkpoints": {
            p: [float(result.regret[p][t - 1] / (t * config.requests_per_round)) for t in checkpoints(config.rounds)]
            for p in POLICIES},
        "seconds_per_update": update_s / updates,
        **result.to_json(),
    }
    out = write_json(args.out, record)
    png = out.with_suffix(".png")
    if plot(result, png):
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
