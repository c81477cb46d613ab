"""Checksums of the solver's results: SHA-256 of theta and precision, bit for bit, on fixed problems.

A refactor that must not change behaviour is checked by running this script on the commit before and
the commit after, and comparing the printed lines (``diff``). Only the public API is used, so that
the script runs unchanged on both sides of a change of the package's layout.

Cases (float64, seeds fixed):

- ``headline native`` / ``headline jax``: ``lljax.solve_block`` on the headline problem of
  ``bench_suite.py`` (20,000 logistic entities x 64 rows x 16 features, full precision), with the
  native kernel and with the pure-JAX path;
- ``update full``: ``RandomEffectModel.update`` on the same data (packing, native kernel, store);
- ``update wide`` / ``update lbfgs``: ``update`` with diagonal precision on 96-feature entities with
  32 rows (Newton in the span of the rows) and with 256 rows (L-BFGS), native and pure JAX.

Run: ``python benchmarks/checksum.py [--out checksums.json]``. Prints one line per case.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import HEADLINE, L2, make_data, model_theta, to_block_arrays, to_dataset  # noqa: E402

import lljax  # noqa: E402


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()[:16]


def model_digest(model: lljax.RandomEffectModel) -> str:
    table = model.to_table()
    order = np.lexsort((table["feature_id"], table["entity"]))
    return digest(np.asarray(table["entity"])[order], np.asarray(table["feature_id"])[order],
                  np.asarray(table["mean"])[order], np.asarray(table["variance"])[order])


def cases(entities: int) -> dict[str, str]:
    out = {}
    h = HEADLINE
    data = make_data(entities, h["rows"], h["features"], h["loss"], h["dtype"], seed=0)
    arrays = to_block_arrays(data, h["loss"], full_prior=True)
    block = lljax.Block(**arrays)
    for name, native in [("headline native", True), ("headline jax", False)]:
        config = lljax.SolverConfig(loss=h["loss"], hessian="full", native=native)
        r = lljax.solve_block(block, L2, 0.8, config)
        out[name] = digest(r.theta, r.precision, r.status, r.iterations)
    model = lljax.RandomEffectModel(h["loss"], l2=L2, delta=0.8, hessian="full")
    model.update(to_dataset(data))
    out["update full"] = digest(model_theta(model, entities, h["features"])) + " " + model_digest(model)

    for name, rows in [("update wide", 32), ("update lbfgs", 256)]:
        wide = make_data(max(entities // 50, 64), rows, 96, "logistic", "float64", seed=1)
        for native in ("1", "0"):
            os.environ["LLJAX_NATIVE"] = native
            jax.clear_caches()
            model = lljax.RandomEffectModel("logistic", l2=L2, delta=0.0, hessian="diagonal")
            model.update(to_dataset(wide))
            out[f"{name} native={native}"] = model_digest(model)
        os.environ.pop("LLJAX_NATIVE")
        jax.clear_caches()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, default=HEADLINE["entities"])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = cases(args.entities)
    for name, value in result.items():
        print(f"{name:24s} {value}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
