"""Several local devices: ``update`` deals its blocks to every local device and gives the same results as
one device (CPU devices forced with XLA_FLAGS, each count in its own process, since JAX fixes the device
count at start-up)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import lljax

rng = np.random.default_rng(0)
U, F = 300, 30
sizes = rng.integers(1, 40, U)
entity = np.repeat(np.arange(U), sizes)
n = len(entity)
X = rng.normal(size=(n, F)) * (rng.random((n, F)) < 0.2)
label = (rng.random(n) < 0.4).astype(float)
data = lljax.Dataset.from_arrays(entity, label, X=X, offset=0.1 * rng.normal(size=n))
out = {"devices": len(jax.local_devices())}
for hessian in ("full", "diagonal"):
    model = lljax.RandomEffectModel("logistic", l2=1.0, delta=0.5, hessian=hessian, memory_budget=1 << 16)
    report = model.update(data, progress=False)
    report = model.update(data, progress=False)  # a second update: stored posteriors as priors
    table = model.to_table()
    out[hessian] = {"blocks": report.blocks, "device_blocks": report.device_blocks,
                    "status": report.status.tolist(),
                    "mean": table["mean"].tolist(), "variance": table["variance"].tolist(),
                    "entity": table["entity"].tolist(), "feature_id": table["feature_id"].tolist()}
print(json.dumps(out))
"""


def run(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_device():
    return run(1)


@pytest.mark.parametrize("devices", [2, 4])
def test_blocks_spread_over_devices_with_the_results_of_one(one_device, devices):
    many = run(devices)
    assert one_device["devices"] == 1 and many["devices"] == devices
    for hessian in ("full", "diagonal"):
        single, spread = one_device[hessian], many[hessian]
        assert single["device_blocks"] == {}  # one device: nothing to deal
        counts = spread["device_blocks"]
        assert len(counts) == devices and sum(counts.values()) == spread["blocks"]  # the last update's blocks
        assert max(counts.values()) - min(counts.values()) <= 1  # dealt in turn
        assert spread["status"] == single["status"]
        for name in ("entity", "feature_id", "mean", "variance"):
            np.testing.assert_array_equal(np.asarray(spread[name]), np.asarray(single[name]), err_msg=name)
