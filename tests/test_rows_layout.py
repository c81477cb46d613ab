"""The ``"rows"`` layout: the native kernel reading each lane's examples from the dataset's CSR rows.

A :class:`~lljax.solve.blocks.RowsBlock` stands for the dense block the packer would build; solving it must
give the dense native solve's results bit for bit, and ``update`` with it the same model as with packed dense
blocks. The oracle of what a RowsBlock stands for, :func:`~lljax.solve.blocks.dense_from_rows`, is itself
checked against the packer (:meth:`lljax.rounds.round.Round.build` in the dense layout).
"""

import gc

import numpy as np
import pytest

from lljax import Dataset, RandomEffectModel, SolverConfig
from lljax.data.arrays import next_pow2
from lljax.rounds.round import Round
from lljax.solve import registry
from lljax.solve.blocks import Block, RowsBlock, dense_from_rows
from lljax.solve.losses import LOSSES


@pytest.fixture(autouse=True)
def rows_for_every_block(monkeypatch):
    """Plan every block these tests build as a RowsBlock, however few its rows (the default threshold keeps
    short lanes packed: see test_short_lanes_are_packed_and_long_ones_read_from_the_rows)."""
    monkeypatch.setattr(registry, "ROWS_LAYOUT_MIN_ROWS", 1)


def messy_dataset(rng: np.random.Generator, dtype, intercept: bool, U: int = 37, own_features: int = 7,
                  vocabulary: int = 40) -> Dataset:
    """CSR rows of ``U`` entities (1 to 12 rows each) whose nonzeros are unsorted, sometimes repeated in a row,
    sometimes in subspace order: every lookup path of the loader (rank guess, merge walk, search, sums) is used.
    Each entity has ``own_features`` of the ``vocabulary``'s ids."""
    rows_per = rng.integers(1, 13, U)
    entity = rng.permutation(np.repeat(np.arange(U), rows_per))  # rows of an entity scattered in the dataset
    n = len(entity)
    nnz = rng.integers(0, own_features - 1, n)
    indptr = np.r_[0, np.cumsum(nnz)]
    own = [rng.choice(np.arange(1, vocabulary), own_features, replace=False) for _ in range(U)]  # each entity's
    fids = np.concatenate([rng.choice(own[e], k) for e, k in zip(entity, nnz)]).astype(np.int64)  # repeats too
    for r in range(0, n, 3):  # every third row: its entity's first features, in order (the rank-guess path)
        k = int(nnz[r])
        fids[indptr[r]:indptr[r + 1]] = np.sort(own[entity[r]])[:k]
    fids = fids.astype(np.int32) if np.dtype(dtype) == np.float32 else fids  # both id widths the kernel reads
    values = rng.normal(size=len(fids))
    label = (rng.random(n) < 0.4).astype(float)
    return Dataset.from_arrays(entity, label, indptr=indptr, feature_ids=fids, values=values,
                               weight=rng.uniform(0.5, 2.0, n), offset=0.3 * rng.normal(size=n),
                               num_features=vocabulary,
                               intercept_id=0 if intercept else None, dtype=dtype)


def label_for(loss: str, data: Dataset, rng: np.random.Generator) -> Dataset:
    if loss == "logistic":
        return data
    label = rng.normal(size=data.num_examples) if loss == "linear" else rng.poisson(1.5, data.num_examples)
    return Dataset.from_arrays(data.entity_keys[data.entity], label.astype(float), indptr=data.given_indptr,
                               feature_ids=data.given_feature_ids, values=data.given_values, weight=data.weight,
                               offset=data.offset, num_features=data.num_features, intercept_id=data.intercept_id,
                               dtype=data.dtype)


def assert_results_equal(a, b) -> None:
    for field in a._fields:
        x, y = getattr(a, field), getattr(b, field)
        if x is None or y is None:
            assert x is None and y is None, field
            continue
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=field)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hessian", ["full", "diagonal", "none"])
@pytest.mark.parametrize("intercept", [True, False])
def test_a_rows_block_solves_as_its_dense_block_bit_for_bit(loss, dtype, hessian, intercept):
    rng = np.random.default_rng(hash((loss, np.dtype(dtype).name, hessian, intercept)) % 2**32)
    data = label_for(loss, messy_dataset(rng, dtype, intercept), rng)
    model = RandomEffectModel(loss, l2=0.7, delta=0.6, hessian=hessian if hessian != "none" else "diagonal")
    model.update(data)  # stored priors for the rounds below (a full or diagonal precision)
    config = SolverConfig(loss=loss, hessian=hessian, tol=1e-6)
    work = Round.prepare(data, loss, model.store, 0.7)
    plans = work.plan(1 << 14, config)  # small blocks: several blocks, padding lanes in the last
    assert {plan.layout for plan in plans} == {"rows"}
    l2, delta = np.asarray(0.7, dtype), np.asarray(0.6, dtype)
    for plan in plans:
        rows = work.build(plan)
        dense = work.build(plan._replace(layout=None))  # the packer's dense block
        assert isinstance(rows, RowsBlock) and isinstance(dense, Block)
        for packed, unpacked in zip(dense, dense_from_rows(rows)):
            np.testing.assert_array_equal(np.asarray(packed), np.asarray(unpacked))
        assert_results_equal(registry.solve(rows, l2, delta, config),
                             registry.solve(dense, l2, delta, config._replace(native=True)))


def repeating_dataset(rng: np.random.Generator, dtype, intercept: bool, U: int = 40) -> Dataset:
    """Rows in runs that repeat one list of ids (their values differ): the ids in subspace order (the loader's
    usual path), shuffled, or with an id twice (its sums), so that a repeated row follows rows of every kind."""
    entity, ids = [], []
    for u in range(U):
        own = np.sort(rng.choice(np.arange(1, 30), 6, replace=False))
        for _ in range(rng.integers(1, 5)):
            kind = rng.integers(0, 3)
            row = (own[:rng.integers(1, 7)] if kind == 0 else rng.permutation(own)[:rng.integers(2, 7)] if kind == 1
                   else np.r_[own[:2], own[1]])
            for _ in range(rng.integers(1, 5)):
                entity.append(u)
                ids.append(row)
    entity = np.array(entity)
    place = rng.random(len(entity))  # the entities' rows interleaved, each entity's runs kept in order
    for u in range(U):
        place[entity == u] = np.sort(place[entity == u])
    order = np.argsort(place)
    indptr = np.r_[0, np.cumsum([len(ids[i]) for i in order])]
    fids = np.concatenate([ids[i] for i in order]).astype(np.int32 if np.dtype(dtype) == np.float32 else np.int64)
    n = len(entity)
    return Dataset.from_arrays(entity[order], (rng.random(n) < 0.4).astype(float), indptr=indptr, feature_ids=fids,
                               values=rng.normal(size=len(fids)), weight=rng.uniform(0.5, 2.0, n),
                               offset=0.3 * rng.normal(size=n), num_features=30,
                               intercept_id=0 if intercept else None, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("intercept", [True, False])
def test_rows_that_repeat_the_row_before_are_read_as_the_packer_packs_them(dtype, intercept):
    """A row with its previous row's ids (Round.row_repeats) is loaded without reading its ids again, in order only
    if that row was: the loaded block equals the packed one, and the solves agree bit for bit, with the repeats
    and without them."""
    rng = np.random.default_rng(5 if intercept else 6)
    data = repeating_dataset(rng, dtype, intercept)
    model = RandomEffectModel("logistic", l2=0.7, delta=0.6, hessian="full")
    config = SolverConfig(loss="logistic", hessian="full", tol=1e-6)
    work = Round.prepare(data, "logistic", model.store, 0.7)
    repeats = work.row_repeats
    ids = np.split(data.given_feature_ids, data.given_indptr[1:-1])
    rows = work.row_order
    first = np.zeros(len(rows), bool)
    first[work.row_start[:-1]] = True
    expected = [i > 0 and not first[i] and np.array_equal(ids[rows[i]], ids[rows[i - 1]]) for i in range(len(rows))]
    np.testing.assert_array_equal(repeats, expected)
    assert 0.3 * len(rows) < repeats.sum() < 0.8 * len(rows)
    l2, delta = np.asarray(0.7, dtype), np.asarray(0.6, dtype)
    for plan in work.plan(1 << 14, config):
        block = work.build(plan._replace(layout="rows"))
        dense = work.build(plan._replace(layout="dense"))
        assert isinstance(block, RowsBlock) and isinstance(dense, Block) and block.source.repeats is repeats
        for packed, unpacked in zip(dense, dense_from_rows(block)):
            np.testing.assert_array_equal(np.asarray(packed), np.asarray(unpacked))
        reference = registry.solve(dense, l2, delta, config._replace(native=True))
        assert_results_equal(registry.solve(block, l2, delta, config), reference)
        unmarked = block._replace(source=block.source._replace(repeats=None))
        assert_results_equal(registry.solve(unmarked, l2, delta, config), reference)


@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_rows_of_wide_subspaces_are_read_as_the_packer_packs_them(hessian):
    """Lanes of more than 64 features: columns the merge walk misses are found by binary search (the counting
    search covers smaller subspaces); the loaded block equals the packed one, and the solves agree bit for bit."""
    rng = np.random.default_rng(41)
    data = messy_dataset(rng, np.float64, True, U=12, own_features=90, vocabulary=400)
    model = RandomEffectModel("logistic", l2=0.7, delta=0.6, hessian=hessian)
    config = SolverConfig(loss="logistic", hessian=hessian, tol=1e-6)
    work = Round.prepare(data, "logistic", model.store, 0.7)
    assert (work.subspaces.sizes > 64).sum() >= 5  # (and smaller ones: both searches)
    l2, delta = np.asarray(0.7), np.asarray(0.6)
    for plan in work.plan(1 << 22, config):
        rows = work.build(plan._replace(layout="rows"))
        dense = work.build(plan._replace(layout="dense"))
        assert isinstance(rows, RowsBlock) and isinstance(dense, Block)
        for packed, unpacked in zip(dense, dense_from_rows(rows)):
            np.testing.assert_array_equal(np.asarray(packed), np.asarray(unpacked))
        assert_results_equal(registry.solve(rows, l2, delta, config),
                             registry.solve(dense, l2, delta, config._replace(native=True)))


def test_rows_blocks_without_padding_lanes_solve_as_padded_ones():
    """Blocks read from the rows are planned with as many lanes as entities; the same block padded with empty lanes
    to a power of two gives its entities the same results, bit for bit (lanes do not interact)."""
    rng = np.random.default_rng(17)
    data = messy_dataset(rng, np.float64, True, U=45)
    model = RandomEffectModel("logistic", l2=0.7, delta=0.6, hessian="full")
    model.update(data)
    config = SolverConfig(loss="logistic", hessian="full", tol=1e-6)
    work = Round.prepare(data, "logistic", model.store, 0.7)
    plans = work.plan(1 << 14, config)
    assert any(plan.lanes & (plan.lanes - 1) for plan in plans)  # some lane counts are not powers of two
    l2, delta = np.asarray(0.7), np.asarray(0.6)
    for plan in plans:
        assert plan.lanes == len(plan.entities) and plan.layout == "rows"
        exact = registry.solve(work.build(plan), l2, delta, config)
        padded = registry.solve(work.build(plan._replace(lanes=int(next_pow2(plan.lanes)) + 8)), l2, delta, config)
        for field in exact._fields:
            x, y = getattr(exact, field), getattr(padded, field)
            if x is None:
                assert y is None
                continue
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y)[:plan.lanes], err_msg=field)


def test_update_with_rows_blocks_equals_update_with_packed_blocks(monkeypatch):
    rng = np.random.default_rng(5)
    batches = [messy_dataset(rng, np.float64, True, U=200) for _ in range(3)]

    def fit(layouts: bool) -> dict:
        monkeypatch.setattr(registry, "ROWS_LAYOUT_MIN_ROWS", 1 if layouts else 1 << 30)
        model = RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full", memory_budget=1 << 16)
        statuses = [model.update(batch).status.copy() for batch in batches]
        return dict(model.to_table(), statuses=np.concatenate(statuses))

    calls = []
    real = registry.choose_layout

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(registry, "choose_layout", spy)
    with_rows = fit(True)
    assert set(calls) == {"rows"}
    calls.clear()
    packed = fit(False)
    assert set(calls) == {"dense"}
    for name in ("entity", "feature_id", "mean", "variance", "statuses"):
        np.testing.assert_array_equal(with_rows[name], packed[name], err_msg=name)


def small_block(dtype=np.float64) -> tuple[RowsBlock, SolverConfig]:
    data = messy_dataset(np.random.default_rng(1), dtype, True, U=9)
    config = SolverConfig(loss="logistic", hessian="full")
    work = Round.prepare(data, "logistic", None, 1.0)
    block = work.build(work.plan(1 << 30, config)[0])
    assert isinstance(block, RowsBlock)
    return block, config


def test_a_feature_outside_the_lanes_subspace_is_named():
    block, config = small_block()
    lane = int(np.flatnonzero(block.lane_end > block.lane_begin)[0])
    sizes = block.sizes.copy()
    sizes[lane] = 0  # the lane's rows now have features outside its (empty) subspace
    with pytest.raises(ValueError, match=r"feature \d+ of dataset row \d+ is not in its entity's subspace"):
        registry.solve(block._replace(sizes=sizes), 1.0, 0.5, config)


def test_rows_out_of_range_raise_index_errors():
    block, config = small_block()
    src = block.source
    for bad in (len(src.row_order) + 5, -1, -3):  # a row index past the dataset, or negative
        order = src.row_order.copy()
        order[block.lane_begin[0]] = bad
        with pytest.raises(IndexError, match=f"dataset row {bad} "):
            registry.solve(block._replace(source=src._replace(row_order=order)), 1.0, 0.5, config)
    indptr = src.indptr.copy()
    row = src.row_order[block.lane_begin[0]]
    indptr[row + 1] = indptr[-1] + 1  # a row's entries past the nonzeros
    with pytest.raises(IndexError, match=f"dataset row {row} "):
        registry.solve(block._replace(source=src._replace(indptr=indptr)), 1.0, 0.5, config)
    order = src.row_order
    end = block.lane_end.copy()
    end[0] = len(order) + 1  # a lane's range past row_order
    with pytest.raises(IndexError, match="rows of lane 0 out of range"):
        registry.solve(block._replace(lane_end=end), 1.0, 0.5, config)
    begin, end = block.lane_begin.copy(), block.lane_end.copy()
    begin[0], end[0] = 0, block.N + 1  # more rows than the block's N, all of them in range
    assert end[0] <= len(order)
    with pytest.raises(IndexError, match="rows of lane 0 out of range"):
        registry.solve(block._replace(lane_begin=begin, lane_end=end), 1.0, 0.5, config)


def test_an_abandoned_solve_is_waited_for_and_one_thread_gives_the_same_result(monkeypatch):
    block, config = small_block(np.float32)
    reference = registry.solve(block, np.float32(1.0), np.float32(0.5), config)
    for _ in range(5):  # started and dropped: freeing it waits for the kernel, whose arrays it holds
        registry.dispatch(block, np.float32(1.0), np.float32(0.5), config)
    gc.collect()
    monkeypatch.setenv("LLJAX_NATIVE_THREADS", "1")
    assert_results_equal(registry.solve(block, np.float32(1.0), np.float32(0.5), config), reference)


def test_without_the_kernel_a_rows_block_is_solved_as_its_dense_block():
    block, config = small_block()
    plain = registry.solve(block, 1.0, 0.5, config._replace(native=False))  # pure JAX on dense_from_rows
    dense = registry.solve(dense_from_rows(block), 1.0, 0.5, config._replace(native=False))
    assert_results_equal(plain, dense)


def test_lanes_are_read_from_the_rows_from_the_threshold_on(monkeypatch):
    """Blocks whose padded rows reach ROWS_LAYOUT_MIN_ROWS are RowsBlocks where the kernel runs (by default every
    block: the threshold is 1), the shorter ones packed; without the kernel every block is packed."""
    monkeypatch.undo()  # the default threshold
    assert registry.ROWS_LAYOUT_MIN_ROWS == 1
    rng = np.random.default_rng(2)
    rows_per = np.r_[np.full(20, 3), np.full(20, 16)]
    entity = np.repeat(np.arange(40), rows_per)
    data = Dataset.from_arrays(entity, (rng.random(len(entity)) < 0.5).astype(float),
                               X=rng.normal(size=(len(entity), 5)))
    config = SolverConfig(loss="logistic", hessian="full")
    for threshold, expected in ((registry.ROWS_LAYOUT_MIN_ROWS, {4: "rows", 16: "rows"}), (16, {4: None, 16: "rows"})):
        monkeypatch.setattr(registry, "ROWS_LAYOUT_MIN_ROWS", threshold)
        plans = Round.prepare(data, "logistic", None, 1.0).plan(1 << 30, config)
        assert {plan.rows: plan.layout for plan in plans} == expected
    assert registry.choose_layout(registry.METHODS["newton"], 64, 16, np.float64, config._replace(native=False)) \
        == "dense"


def test_an_interrupted_update_with_solves_in_flight_leaves_the_model_as_it_was(monkeypatch):
    rng = np.random.default_rng(9)
    first, second = (messy_dataset(rng, np.float64, True, U=300) for _ in range(2))
    model = RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full", memory_budget=1 << 14)
    model.update(first)
    before = model.to_table()
    reference = RandomEffectModel("logistic", l2=1.0, delta=0.8, hessian="full", memory_budget=1 << 14)
    reference.update(first)
    reference.update(second)

    from lljax.state.store import PendingWrites

    real, calls = PendingWrites.add, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:  # the second block's results: later blocks are in flight
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(PendingWrites, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.update(second)
    assert len(calls) == 2
    monkeypatch.setattr(PendingWrites, "add", real)
    for name, values in model.to_table().items():
        np.testing.assert_array_equal(values, before[name], err_msg=name)
    model.store.check()
    model.update(second)  # the redo gives what an uninterrupted update gives
    for name, values in model.to_table().items():
        np.testing.assert_array_equal(values, reference.to_table()[name], err_msg=name)


def test_a_wrong_repeat_mark_never_writes_past_its_row():
    """RowSource.repeats is trusted for the values only: a row marked as repeating the row before it, but longer (an
    id given many times), is read in full, as unmarked; the block solves as its packed block."""
    entity = np.array([0, 0, 0, 1, 1])
    ids = [[1], [1] * 9, [1], [2, 3], [2, 3]]
    indptr = np.r_[0, np.cumsum([len(r) for r in ids])]
    rng = np.random.default_rng(3)
    data = Dataset.from_arrays(entity, np.array([1.0, 0.0, 1.0, 0.0, 1.0]), indptr=indptr,
                               feature_ids=np.concatenate(ids), values=rng.normal(size=indptr[-1]), num_features=4)
    config = SolverConfig(loss="logistic", hessian="full", tol=1e-6)
    work = Round.prepare(data, "logistic", None, 0.7)
    l2, delta = np.asarray(0.7), np.asarray(0.6)
    for plan in work.plan(1 << 20, config):
        block = work.build(plan._replace(layout="rows"))
        marked = block._replace(source=block.source._replace(repeats=np.ones(data.num_examples, np.uint8)))
        dense = work.build(plan._replace(layout="dense"))
        reference = registry.solve(dense, l2, delta, config._replace(native=True))
        assert_results_equal(registry.solve(block, l2, delta, config), reference)
        assert_results_equal(registry.solve(marked, l2, delta, config), reference)


def test_repeat_marks_of_another_length_are_refused_by_name():
    rng = np.random.default_rng(4)
    data = messy_dataset(rng, np.float64, True, U=5)
    config = SolverConfig(loss="logistic", hessian="full", tol=1e-6)
    work = Round.prepare(data, "logistic", None, 0.7)
    plan = work.plan(1 << 20, config)[0]
    block = work.build(plan._replace(layout="rows"))
    short = block._replace(source=block.source._replace(repeats=np.zeros(data.num_examples - 1, np.uint8)))
    with pytest.raises(ValueError, match=f"repeats has {data.num_examples - 1} entries, row_order {data.num_examples}"):
        registry.solve(short, np.asarray(0.7), np.asarray(0.6), config)
