"""The benchmark suite's floor measurement (benchmarks/floor.py), on both of its paths: the host's
(NumPy, what CI's CPU uses) and the device's (JAX, what a GPU uses; here run on JAX's CPU device)."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def floor():
    spec = importlib.util.spec_from_file_location("lljax_bench_floor", BENCHMARKS / "floor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device", [False, True], ids=["host", "device"])
def test_measure_gives_every_rate(floor, device):
    m = floor.measure(repeats=1, quick=True, device=device)
    assert m["gemm_library"] == ("JAX" if device else "NumPy")
    rates = [*m["gemm_gflops"].values(), *m["batched_gflops"].values(), *m["exp_per_s"].values(),
             *m["read_gbs_by_method"].values(), m["copy_gbs"]]
    assert set(m["gemm_gflops"]) == set(m["exp_per_s"]) and "float32" in m["gemm_gflops"]
    assert all(math.isfinite(r) and r > 0 for r in rates)
    assert m["read_gbs"] == max(m["read_gbs_by_method"].values())


def test_best_of_takes_the_higher_rate(floor):
    low = {"gemm_gflops": {"float64": 10.0}, "batched_gflops": {"float64": 1.0}, "exp_per_s": {"float64": 5e8},
           "read_gbs_by_method": {"sum": 20.0, "ddot": 25.0}, "read_gbs": 25.0, "copy_gbs": 30.0}
    high = {"gemm_gflops": {"float64": 12.0}, "batched_gflops": {"float64": 0.5}, "exp_per_s": {"float64": 9e8},
            "read_gbs_by_method": {"sum": 28.0, "ddot": 21.0}, "read_gbs": 28.0, "copy_gbs": 29.0}
    best = floor.best_of(low, high)
    assert best["gemm_gflops"] == {"float64": 12.0} and best["batched_gflops"] == {"float64": 1.0}
    assert best["exp_per_s"] == {"float64": 9e8} and best["copy_gbs"] == 30.0
    assert best["read_gbs_by_method"] == {"sum": 28.0, "ddot": 25.0} and best["read_gbs"] == 28.0
    assert best["measurements"] == [low, high]
