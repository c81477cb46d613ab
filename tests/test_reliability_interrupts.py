"""Interrupts (issue 18, class 3): nothing already stored is lost, whatever the interruption.

A ``KeyboardInterrupt`` raised at any line of the write path (injected with ``sys.settrace``), an
exception in a later ``max_rows`` round, or a failed first update: the model is left exactly as it
was before the call, and the next update gives the same result as if the failed one never happened.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lljax
from lljax import Dataset, RandomEffectModel
from lljax.rounds.round import Round

STORE_FILE = os.path.normcase(os.path.abspath(lljax.state.store.__file__))
MODEL_FILE = os.path.normcase(os.path.abspath(lljax.model.random_effect.__file__))
LLJAX_DIR = os.path.dirname(os.path.normcase(os.path.abspath(lljax.__file__)))


def batch(seed, keys, rows, features, loss="logistic"):
    rng = np.random.default_rng(seed)
    entity = np.repeat(np.asarray(keys), rows)
    n = len(entity)
    X = rng.normal(size=(n, features)) * (rng.random((n, features)) < 0.7)
    label = (rng.random(n) < 0.5).astype(float) if loss == "logistic" else rng.normal(size=n)
    return Dataset.from_arrays(entity, label, X=X, offset=0.1 * rng.normal(size=n))


def state(model):
    """Everything observable about the stored state, in slot order."""
    if model.store is None:
        return None
    flat = model.store.to_flat()
    return (model.dtype, model.store.key_kind, list(model.entity_keys), flat.indptr.tobytes(),
            flat.feature_ids.tobytes(), flat.means.tobytes(), None if flat.precision is None else flat.precision.tobytes())


class Interrupt:
    """A ``sys.settrace`` tracer that raises ``KeyboardInterrupt`` at the ``at``-th line event of the
    frames whose file is in ``files`` (or under ``prefix``); with ``at=None`` it only counts them."""

    def __init__(self, files=(), prefix=None, at=None):
        self.files, self.prefix, self.at = set(files), prefix, at
        self.count = 0
        self.lines = []

    def wanted(self, frame):
        name = os.path.normcase(frame.f_code.co_filename)
        return name in self.files or (self.prefix is not None and name.startswith(self.prefix))

    def __call__(self, frame, event, arg):
        if not self.wanted(frame):
            return None
        return self.local

    def local(self, frame, event, arg):
        if event == "line":
            if self.at is None:
                self.lines.append((frame.f_code.co_filename, frame.f_lineno))
            elif self.count == self.at:
                self.count += 1
                raise KeyboardInterrupt(f"injected at {frame.f_code.co_filename}:{frame.f_lineno}")
            self.count += 1
        return self.local

    def run(self, fn, *args, **kwargs):
        sys.settrace(self)
        try:
            return fn(*args, **kwargs)
        finally:
            sys.settrace(None)


def fresh(hessian, first):
    model = RandomEffectModel("logistic", hessian=hessian, delta=0.5, memory_budget=1 << 12, max_rows=4)
    model.update(first)
    return model


@pytest.mark.parametrize("hessian", ["full", "diagonal", "none"])
def test_a_keyboard_interrupt_at_every_line_of_the_write_path_leaves_the_model_as_it_was(hessian):
    """Every distinct line of the store and of the update's write-back, interrupted at its first execution."""
    first = batch(0, np.arange(12), 3, 3)
    second = batch(1, np.arange(6, 20), 6, 6)  # stored and new entities, wider (they move slab), 2 rounds
    fresh(hessian, first).update(second)  # fills the process's caches (a cache's first miss runs lines only once)
    counter = Interrupt(files=[STORE_FILE, MODEL_FILE])
    reference = fresh(hessian, first)
    counter.run(reference.update, second)
    first_event = {}
    for i, line in enumerate(counter.lines):
        first_event.setdefault(line, i)
    assert len(first_event) > 100
    replay = fresh(hessian, first)
    replay.update(second)
    for n, at in enumerate(sorted(first_event.values())):
        model = fresh(hessian, first)
        before = state(model)
        with pytest.raises(KeyboardInterrupt):
            Interrupt(files=[STORE_FILE, MODEL_FILE], at=at).run(model.update, second)
        assert state(model) == before, counter.lines[at]
        model.store.check()
        if n % 25 == 0:  # and it updates as if the interrupted update never happened
            model.update(second)
            assert state(model) == state(replay), counter.lines[at]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0, 1, exclude_max=True), hessian=st.sampled_from(["full", "diagonal"]))
def test_property_an_interrupt_anywhere_in_an_update_leaves_the_model_as_it_was(fraction, hessian):
    first = batch(2, np.arange(10), 3, 5)
    wider = batch(6, np.arange(3), 3, 8)  # 3 entities move to wider rows: their old rows are free after it
    second = batch(3, np.arange(5, 15), 5, 5)  # new entities as narrow as the first: they take the free rows

    def fresh(hessian, first):
        model = RandomEffectModel("logistic", hessian=hessian, delta=0.5, memory_budget=1 << 12, max_rows=4)
        model.update(first)
        model.update(wider)
        return model

    reusing = fresh(hessian, first)
    unused = sum(u for _, _, u in reusing.store.row_usage().values())
    allocated = sum(a for a, _, _ in reusing.store.row_usage().values())
    reusing.update(second)
    assert unused > 0 and sum(a for a, _, _ in reusing.store.row_usage().values()) < allocated + 5  # 5 new entities
    counter = Interrupt(prefix=LLJAX_DIR)
    counter.run(fresh(hessian, first).update, second)
    model = fresh(hessian, first)
    before = state(model)
    at = int(fraction * counter.count)
    with pytest.raises(KeyboardInterrupt):
        Interrupt(prefix=LLJAX_DIR, at=at).run(model.update, second)
    assert state(model) == before
    model.store.check()
    model.update(second)
    replay = fresh(hessian, first)
    replay.update(second)
    assert state(model) == state(replay)


def fail_in_round_two(monkeypatch):
    """Make the second ``Round.prepare`` from now on raise ``RuntimeError("round two failed")``; returns
    the list of calls."""
    real, calls = Round.prepare, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("round two failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(Round, "prepare", failing)
    return calls


def test_an_error_in_a_later_max_rows_round_undoes_the_earlier_rounds(monkeypatch):
    first = batch(4, np.arange(8), 2, 3)
    second = batch(5, np.arange(4, 12), 9, 3)  # 9 rows, max_rows 4: three rounds
    model = RandomEffectModel("logistic", hessian="full", delta=0.5, max_rows=4)
    model.update(first)
    before = state(model)
    real = Round.prepare
    calls = fail_in_round_two(monkeypatch)
    with pytest.raises(RuntimeError, match="round two"):
        model.update(second)
    assert len(calls) == 2 and state(model) == before  # round 1's results were undone too
    monkeypatch.setattr(Round, "prepare", real)
    model.update(second)
    replay = RandomEffectModel("logistic", hessian="full", delta=0.5, max_rows=4)
    replay.update(first)
    replay.update(second)
    assert state(model) == state(replay)


def test_a_failed_first_update_does_not_fix_the_dtype(monkeypatch):
    model = RandomEffectModel("linear", hessian="diagonal")
    data64 = batch(6, np.arange(5), 3, 2, loss="linear")
    monkeypatch.setattr(Round, "build", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        model.update(data64)
    assert model.dtype is None and model.store is None and len(model) == 0
    monkeypatch.undo()
    rng = np.random.default_rng(7)
    data32 = Dataset.from_arrays(np.arange(4), rng.normal(size=4).astype(np.float32),
                                 X=rng.normal(size=(4, 2)).astype(np.float32), dtype=np.float32)
    model.update(data32)  # the failed float64 update fixed nothing: a float32 one is accepted
    assert model.dtype == np.float32


@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_an_interrupted_table_import_leaves_the_model_as_it_was(hessian):
    model = RandomEffectModel("linear", hessian=hessian)
    model.update(batch(8, np.arange(6), 3, 3, loss="linear"))
    before = state(model)
    table = {"entity": np.array([1, 1, 2, 9, 9, 9]), "feature_id": np.array([0, 7, 1, 0, 1, 2]),
             "mean": np.arange(6.0), "variance": np.ones(6)}
    warm = RandomEffectModel("linear", hessian=hessian)  # fills the process's caches (see the write-path test)
    warm.update(batch(8, np.arange(6), 3, 3, loss="linear"))
    warm.import_table(table)
    counter2 = Interrupt(files=[STORE_FILE, MODEL_FILE])
    probe = RandomEffectModel("linear", hessian=hessian)
    probe.update(batch(8, np.arange(6), 3, 3, loss="linear"))
    counter2.run(probe.import_table, table)
    for at in range(0, counter2.count, 3):
        model2 = RandomEffectModel("linear", hessian=hessian)
        model2.update(batch(8, np.arange(6), 3, 3, loss="linear"))
        with pytest.raises(KeyboardInterrupt):
            Interrupt(files=[STORE_FILE, MODEL_FILE], at=at).run(model2.import_table, table)
        assert state(model2) == before
        model2.store.check()
    model.import_table(table)
    assert model.coefficients(9).mean.tolist() == [3.0, 4.0, 5.0]


def dense_batch(seed, keys, rows, features):
    """Every row of every entity has all ``features`` columns (nonzero): an entity's width is known."""
    rng = np.random.default_rng(seed)
    entity = np.repeat(np.asarray(keys), rows)
    n = len(entity)
    return Dataset.from_arrays(entity, (rng.random(n) < 0.5).astype(float), X=rng.normal(size=(n, features)) + 3.0)


@pytest.mark.parametrize("hessian", ["full", "diagonal", "none"])
def test_rows_left_by_entities_that_grow_are_reused_and_an_interrupt_anywhere_in_the_reuse_undoes_it(hessian):
    """Entities whose features grow leave their narrow rows; once that update is committed, new narrow
    entities take those rows instead of new ones. The results are those of models that never shared
    rows, and an interrupt at any line of the store during the reusing update leaves the model as it was."""
    narrow, wide, newcomers = dense_batch(20, np.arange(8), 3, 2), dense_batch(21, np.arange(8), 3, 5), \
        dense_batch(22, np.arange(100, 108), 3, 2)

    def grown():
        model = RandomEffectModel("logistic", hessian=hessian, delta=0.5)
        model.update(narrow)
        model.update(wide)  # the 8 entities move from width 3 (intercept + 2) to width 6
        return model

    model = grown()
    assert model.store.row_usage() == {3: (8, 0, 8), 6: (8, 8, 0)}
    model.update(newcomers)
    assert model.store.row_usage() == {3: (8, 8, 0), 6: (8, 8, 0)}  # no new row: the 8 left ones are reused
    model.store.check()
    alone, old = RandomEffectModel("logistic", hessian=hessian, delta=0.5), RandomEffectModel(
        "logistic", hessian=hessian, delta=0.5)
    alone.update(newcomers)
    old.update(narrow)
    old.update(wide)
    for key in range(8):
        np.testing.assert_array_equal(model.coefficients(key).mean, old.coefficients(key).mean)
    for key in range(100, 108):
        got, expected = model.coefficients(key), alone.coefficients(key)
        np.testing.assert_array_equal(got.mean, expected.mean)
        if hessian != "none":
            np.testing.assert_array_equal(got.precision, expected.precision)
    reference = state(model)

    counter = Interrupt(files=[STORE_FILE])
    counter.run(grown().update, newcomers)
    assert counter.count > 100
    for at in range(0, counter.count, 2):
        model = grown()
        before = state(model)
        with pytest.raises(KeyboardInterrupt):
            Interrupt(files=[STORE_FILE], at=at).run(model.update, newcomers)
        assert state(model) == before, at
        model.store.check()
        assert model.store.row_usage() == {3: (8, 0, 8), 6: (8, 8, 0)}, at
        if at % 40 == 0:
            model.update(newcomers)
            assert state(model) == reference, at


def test_a_snapshot_dropped_without_restore_or_commit_does_not_stop_row_reuse():
    """An interrupt between taking a snapshot and holding it leaves a snapshot no one will close; once it
    is gone, rows left by later writes are still reused."""
    narrow, wide = dense_batch(30, np.arange(8), 3, 2), dense_batch(31, np.arange(8), 3, 5)
    model = RandomEffectModel("logistic", hessian="full", delta=0.5)
    model.update(narrow)
    model.store.snapshot(model.store.lookup(np.arange(8)))  # taken and dropped at once
    model.update(wide)
    model.update(dense_batch(32, np.arange(100, 108), 3, 2))
    assert model.store.row_usage() == {3: (8, 8, 0), 6: (8, 8, 0)}
    model.store.check()


@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_an_interrupt_inside_the_undo_of_a_failed_update_does_not_stop_the_undo(monkeypatch, hessian):
    """The undo of a failed update, itself interrupted at any of its lines, is finished before the
    interrupt goes on: the model is as it was, and no row is both in use and free."""
    from lljax.state.store import EntityStore

    first, second = batch(40, np.arange(8), 2, 3), batch(41, np.arange(4, 12), 9, 5)  # 3 max_rows rounds
    real_prepare, real_restore = Round.prepare, EntityStore._restore

    def failing_in_round_two():
        model = RandomEffectModel("logistic", hessian=hessian, delta=0.5, max_rows=4)
        monkeypatch.setattr(Round, "prepare", real_prepare)
        model.update(first)
        fail_in_round_two(monkeypatch)
        return model

    counted = Interrupt(files=[STORE_FILE])
    model = failing_in_round_two()
    monkeypatch.setattr(EntityStore, "_restore", lambda self, snap: counted.run(real_restore, self, snap))
    with pytest.raises(RuntimeError, match="round two"):
        model.update(second)
    assert counted.count > 20
    for at in range(counted.count):
        model = failing_in_round_two()
        before = state(model)
        attempts = []

        def interrupted_once(self, snap, at=at, attempts=attempts):
            attempts.append(1)
            if len(attempts) == 1:
                return Interrupt(files=[STORE_FILE], at=at).run(real_restore, self, snap)
            return real_restore(self, snap)

        monkeypatch.setattr(EntityStore, "_restore", interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            model.update(second)
        assert len(attempts) == 2, at
        assert state(model) == before, at
        model.store.check()
