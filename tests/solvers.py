"""The registered solve methods under the names the tests use (each is :func:`lljax.solve.registry.solve`)."""

from functools import partial

from lljax.solve.registry import METHODS, choose_backend, solve

solve_span = partial(solve, method="span")  # a block the span method does not accept goes to its fallback
solve_lbfgs = partial(solve, method="lbfgs")


def uses_native(block, config, method="newton") -> bool:
    """Whether the registry solves ``block`` on the native kernel (decided on the host)."""
    return choose_backend(METHODS[method], block, config) != "jax"


def spy_model_solves(monkeypatch) -> list:
    """Record ``(method, block)`` of every block :meth:`lljax.RandomEffectModel.update` hands to the registry."""
    import lljax.model.random_effect as random_effect

    calls = []
    real = random_effect.dispatch

    def spy(block, *args, method, **kwargs):
        calls.append((method, block))
        return real(block, *args, method=method, **kwargs)

    monkeypatch.setattr(random_effect, "dispatch", spy)
    return calls


def force_newton(monkeypatch) -> None:
    """Make the registry choose dense Newton for every block shape."""
    from lljax.solve import registry

    monkeypatch.setattr(registry, "choose_method", lambda rows, features, full: METHODS["newton"])
