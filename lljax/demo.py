"""The main job, end to end, on built-in synthetic GAME data: ``python -m lljax.demo``.

1. Generate data: ``--entities`` entities (users, items, ...), each with a hidden coefficient
   vector over 7 features drawn from a shared vocabulary of 200 plus an intercept (8 coefficients); per-entity
   row counts from a power law on [1, 300]; every row carries a few of its entity's
   (binary) features, a timestamp, and the score of an already trained fixed-effect model
   (the offset); labels are logistic in ``offset + x . theta_entity``.
2. Split each entity's rows by time: the earliest 70% train, the rest test. The training
   rows are cut at the median timestamp into two mini-batches, as they would arrive.
3. Train a sequential Bayesian logistic random-effect model on mini-batch 1, then on
   mini-batch 2 with the posterior of the first as its prior (``delta`` forgetting factor,
   full precision), as a stream with progressive validation (each mini-batch is scored
   before the model trains on it).
4. Print, per update, what it did and how fast, and the test AUC / log-loss of the
   fixed-effect offset alone vs offset + random effects.
5. Save the model, load it back, and check that it scores the test set identically.

The library never flips global JAX flags; this script enables float64 itself (unless
``--float32``). Each update is run twice on fresh models with the same data: the first pass
includes JIT compilation of every block shape, the second is the warm (steady-state) time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # main imports lljax itself, after setting JAX's precision
    from lljax.data.dataset import Dataset
    from lljax.model.random_effect import RandomEffectModel

__all__ = ["make_game_data", "main"]

VOCABULARY = 200  # shared feature vocabulary (global ids 1..VOCABULARY; 0 is the intercept)
FEATURES_PER_ENTITY = 7  # + the intercept: 8 coefficients, so every entity fits an 8-wide block
MAX_ROWS = 300
POWER_LAW_EXPONENT = 1.5  # p(rows) ~ rows^-1.5 on [1, MAX_ROWS]
FEATURES_PER_ROW = 4
TRAIN_FRACTION = 0.7


def _power_law_counts(rng: np.random.Generator, size: int, lo: float, hi: float, alpha: float) -> np.ndarray:
    """Integers in [lo, hi] with density ~ x^-alpha (inverse-CDF sampling of a truncated power law)."""
    u = rng.random(size)
    a = 1.0 - alpha
    x = (lo**a + u * ((hi + 1) ** a - lo**a)) ** (1.0 / a)
    return np.clip(np.floor(x), lo, hi).astype(np.int64)


def make_game_data(num_entities: int, seed: int, dtype: npt.DTypeLike = np.float64) -> dict[str, np.ndarray]:
    """Synthetic GAME data, vectorized. Returns a dict of per-example arrays.

    Keys: ``entity (n,)``, ``time (n,)``, ``label (n,)`` in {0, 1}, ``offset (n,)``, CSR
    ``indptr (n+1,)``, ``feature_ids (nnz,)`` (global ids in [1, VOCABULARY]), ``values (nnz,)``,
    and ``theta_true (U, 1 + FEATURES_PER_ENTITY)`` (intercept first) with ``entity_features
    (U, FEATURES_PER_ENTITY)``.
    """
    rng = np.random.default_rng(seed)
    U, K = num_entities, FEATURES_PER_ENTITY
    # Each entity's features: K distinct ids from the vocabulary (argsort of random keys per row).
    entity_features = np.argsort(rng.random((U, VOCABULARY)), axis=1)[:, :K] + 1
    theta_true = rng.normal(0.0, 0.7, (U, 1 + K))
    theta_true[:, 0] *= 0.5  # entity intercept (bias relative to the fixed effect)

    rows = _power_law_counts(rng, U, 1, MAX_ROWS, POWER_LAW_EXPONENT)
    entity = np.repeat(np.arange(U, dtype=np.int64), rows)
    n = entity.shape[0]
    time_ = rng.random(n)

    # FEATURES_PER_ROW distinct local features per row (binary), from the entity's K.
    local = np.argsort(rng.random((n, K)), axis=1)[:, :FEATURES_PER_ROW]
    local.sort(axis=1)
    feature_ids = entity_features[entity[:, None], local].reshape(-1)
    values = np.ones(n * FEATURES_PER_ROW, dtype)
    indptr = np.arange(n + 1, dtype=np.int64) * FEATURES_PER_ROW

    # Fixed-effect score: informative but blind to the entity's own preferences.
    offset = rng.normal(0.0, 1.0, n)
    margin = offset + theta_true[entity, 0] + theta_true[entity[:, None], 1 + local].sum(axis=1)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-margin))).astype(dtype)
    return dict(entity=entity, time=time_, label=label, offset=offset.astype(dtype), indptr=indptr,
                feature_ids=feature_ids, values=values, theta_true=theta_true, entity_features=entity_features)


def _split(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (batch1, batch2, test): per entity the earliest 70% of rows train (at least one),
    the rest test; training rows are cut into two mini-batches at their median timestamp."""
    entity, t = data["entity"], data["time"]
    order = np.lexsort((t, entity))  # by entity, then time
    counts = np.bincount(entity)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(entity), np.int64)
    rank[order] = np.arange(len(entity)) - np.repeat(start, counts)
    n_train = np.maximum(1, np.floor(TRAIN_FRACTION * counts).astype(np.int64))
    train = rank < n_train[entity]
    cut = np.median(t[train])
    return train & (t <= cut), train & (t > cut), ~train


def _dataset(lljax: ModuleType, data: dict[str, np.ndarray], dtype: npt.DTypeLike) -> Dataset:
    """All rows as one :class:`lljax.Dataset` (mini-batches and the test set are ``take``-n from it)."""
    return lljax.Dataset.from_arrays(
        data["entity"], data["label"], indptr=data["indptr"], feature_ids=data["feature_ids"],
        values=data["values"], offset=data["offset"], num_features=VOCABULARY + 1, intercept_id=0, dtype=dtype,
    )


def _model(lljax: ModuleType) -> RandomEffectModel:
    return lljax.RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lljax.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=3000, help="number of entities (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data (default 0)")
    parser.add_argument("--float32", action="store_true", help="train in float32 (default: float64)")
    args = parser.parse_args(argv)
    if args.entities < 10:
        parser.error("--entities must be >= 10 (both mini-batches and the test set need rows)")

    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)  # a script may; the library never does
    import lljax

    dtype = np.float32 if args.float32 else np.float64
    data = make_game_data(args.entities, args.seed, dtype)
    b1, b2, test = _split(data)
    everything = _dataset(lljax, data, dtype)
    batches = [everything.take(b1), everything.take(b2)]
    test_set = everything.take(test)
    rows = np.bincount(data["entity"], minlength=args.entities)

    print(f"lljax {lljax.__version__} demo | jax {jax.__version__} on {jax.default_backend()} "
          f"({len(jax.devices())} device(s)) | {np.dtype(dtype).name}")
    print(f"data: {args.entities} entities, {len(data['entity'])} rows (per entity: min {rows.min()}, "
          f"median {int(np.median(rows))}, max {rows.max()}), vocabulary {VOCABULARY} features, "
          f"{FEATURES_PER_ENTITY} per entity + intercept")
    print(f"split by time: mini-batch 1 {b1.sum()} rows / {batches[0].num_entities} entities, "
          f"mini-batch 2 {b2.sum()} rows / {batches[1].num_entities} entities, "
          f"test {test.sum()} rows / {test_set.num_entities} entities")
    print("model: RandomEffectModel('logistic', l2=1.0, delta=0.8, hessian='full'); "
          "update 2 uses the posterior of update 1 as prior\n")

    # Pass 1 compiles every block shape; pass 2 (fresh model, same data) is the warm time. Pass 2 is a
    # stream with progressive validation: each mini-batch is scored before the model trains on it.
    cold_model = _model(lljax)
    cold = [cold_model.update(batch) for batch in batches]
    model = _model(lljax)
    stream = lljax.run_stream(model, batches)
    warm = [window.report for window in stream.windows]

    header = (f"{'update':<8}{'entities':>9}{'rows':>8}{'blocks':>7}{'iters mean/max':>16}"
              f"{'1st run (compile)':>19}{'warm':>9}{'entities/s':>12}{'AUC before':>12}   status")
    print(header)
    print("-" * len(header))
    for i, (c, w, window) in enumerate(zip(cold, warm, stream.windows), start=1):
        counts = " ".join(f"{k}={v}" for k, v in w.status_counts.items() if v)
        print(f"{i:<8}{len(w.entity_keys):>9}{int(w.rows.sum()):>8}{w.blocks:>7}"
              f"{w.iterations.mean():>11.2f} / {w.iterations.max():<2}{c.seconds:>18.2f}s{w.seconds:>8.3f}s"
              f"{len(w.entity_keys) / w.seconds:>12,.0f}{window.metrics['auc']:>12.4f}   {counts}")
    print("1st run: first call on these block shapes, includes JIT compilation; warm: the same update re-run "
          "on a fresh model (entities/s uses it)")
    print("AUC before: progressive validation, the mini-batch scored by the model before it trains on it "
          f"(pooled over both: {stream.overall['auc']:.4f})")
    print(f"stored entities after both updates: {len(model)}\n")

    y = test_set.label
    if len(np.unique(y)) < 2:
        print(f"test set has {test_set.num_examples} rows of a single class: AUC undefined (try more --entities)")
        return 0
    offset_only = test_set.offset.astype(np.float64)
    with_re = model.score(test_set)
    before = (lljax.auc(offset_only, y), lljax.log_loss(offset_only, y))
    after = (lljax.auc(with_re, y), lljax.log_loss(with_re, y))
    print(f"test ({test_set.num_examples} rows)   {'AUC':>8}{'log-loss':>10}")
    print(f"{'fixed effect only':<24}{before[0]:>8.4f}{before[1]:>10.4f}")
    print(f"{'+ random effects':<24}{after[0]:>8.4f}{after[1]:>10.4f}")
    print(f"{'change':<24}{after[0] - before[0]:>+8.4f}{after[1] - before[1]:>+10.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.npz")
        model.save(path)
        loaded = lljax.RandomEffectModel.load(path)
        same = np.array_equal(loaded.score(test_set), with_re)
        print(f"\nsaved {len(model)} entities to model.npz ({os.path.getsize(path) / 1e6:.1f} MB), loaded back: "
              f"test scores {'identical' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
