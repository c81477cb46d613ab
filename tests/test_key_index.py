"""The store's key -> slot maps (``lljax.state.key_index``) against a dict, on the native and the NumPy path."""

import numpy as np
import pytest

from lljax.solve import kernels
from lljax.state.key_index import DictKeyIndex, IntKeyIndex
from lljax.state.store import EntityStore

PATHS = ["native", "numpy"]


def _use(path, monkeypatch):
    if path == "native":
        assert kernels.available(), f"the native helpers are not built: {kernels.build_error()}"
        monkeypatch.delenv("LLJAX_NATIVE", raising=False)
    else:
        monkeypatch.setenv("LLJAX_NATIVE", "0")


@pytest.mark.parametrize("path", PATHS)
def test_int_index_maps_keys_as_a_dict_does(path, monkeypatch):
    """Batches of keys (negative, huge, the int64 extremes, and many that share their top bits) inserted and looked
    up, growing the table many times: every key held maps to its slot, every other key to -1, as a dict says."""
    _use(path, monkeypatch)
    rng = np.random.default_rng(1)
    pool = np.unique(np.concatenate([
        rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 30_000, dtype=np.int64),
        np.arange(-500, 500), np.arange(20_000) << 40,  # clustered low bits / high bits
        [np.iinfo(np.int64).min, np.iinfo(np.int64).max]]))
    pool = rng.permutation(pool)
    index, oracle, first = IntKeyIndex(), {}, 0
    for part in np.array_split(pool[:40_000], 7):
        index.insert(part, first)
        oracle.update(zip(part.tolist(), range(first, first + len(part))))
        first += len(part)
        probe = rng.choice(pool, 5_000)
        np.testing.assert_array_equal(index.lookup(probe), [oracle.get(k, -1) for k in probe.tolist()])
    assert len(index) == len(oracle) == 40_000
    assert index.table_slots.size >= 2 * len(index)
    keys, slots = index.items()
    assert dict(zip(keys.tolist(), slots.tolist())) == oracle
    assert pool[0] in index and int(pool[-1]) not in index and "a" not in index


def test_int_index_native_and_numpy_tables_read_each_other(monkeypatch):
    """A table filled by one path is read by the other (the same hashing and probing)."""
    rng = np.random.default_rng(2)
    keys = np.unique(rng.integers(-10**12, 10**12, 5_000))
    for writer, reader in (("native", "numpy"), ("numpy", "native")):
        _use(writer, monkeypatch)
        index = IntKeyIndex()
        index.insert(keys[:3000], 10)
        _use(reader, monkeypatch)
        np.testing.assert_array_equal(index.lookup(keys), np.r_[np.arange(10, 3010), np.full(len(keys) - 3000, -1)])
        index.insert(keys[3000:], 3010)
        _use(writer, monkeypatch)
        np.testing.assert_array_equal(index.lookup(keys), np.arange(10, 10 + len(keys)))


@pytest.mark.parametrize("path", PATHS)
def test_int_index_refuses_repeated_or_held_keys_and_keeps_what_it_had(path, monkeypatch):
    _use(path, monkeypatch)
    index = IntKeyIndex()
    index.insert(np.arange(100), 0)
    before = index.lookup(np.arange(-5, 400))
    for bad in (np.array([500, 501, 500]), np.array([600, 601, 42]), np.array([700, 2**70], dtype=object),
                np.array(["x"], dtype=object), np.array([True], dtype=object)):
        with pytest.raises(ValueError, match="entity key"):
            index.insert(bad, 100)
        assert len(index) == 100
        np.testing.assert_array_equal(index.lookup(np.arange(-5, 400)), before)
        assert 500 not in index and 600 not in index


@pytest.mark.parametrize("path", PATHS)
def test_int_index_looks_up_keys_of_any_type_without_false_hits(path, monkeypatch):
    """uint64 keys past int64's range, Python ints past it, strings, bools and floats are held by no integer index
    (a wrapped or truncated value must not find another key)."""
    _use(path, monkeypatch)
    index = IntKeyIndex()
    index.insert(np.array([-1, 0, 1, 7]), 0)
    np.testing.assert_array_equal(index.lookup(np.array([2**64 - 1, 7, 1], np.uint64)), [-1, 3, 2])
    mixed = np.array([2**64 - 1, -1, "1", True, 1.0, 7, np.int32(0)], dtype=object)
    np.testing.assert_array_equal(index.lookup(mixed), [-1, 0, -1, -1, -1, 3, 1])


@pytest.mark.parametrize("path", PATHS)
def test_truncate_forgets_the_last_slots(path, monkeypatch):
    _use(path, monkeypatch)
    keys = np.random.default_rng(3).permutation(10_000) * 7919
    for index, given in ((IntKeyIndex(), keys), (DictKeyIndex(), keys.astype(str))):
        index.insert(given, 0)
        index.truncate(6_000)
        assert len(index) == 6_000
        np.testing.assert_array_equal(index.lookup(given), np.r_[np.arange(6_000), np.full(4_000, -1)])
        index.insert(given[7_000:], 6_000)  # slots go on from the truncation
        np.testing.assert_array_equal(index.lookup(given[7_000:]), np.arange(6_000, 9_000))


def test_a_store_registers_and_undoes_int_keys_through_its_index():
    """An EntityStore's keys: an interrupted (restored) write forgets the keys it registered, a later write
    registers them again, and a repeated key in one write is a ValueError that registers nothing."""
    store = EntityStore(np.float64, "diagonal")
    keys = np.arange(0, 3000, 3)
    fids = np.tile(np.arange(2), (len(keys), 1))
    store.write(keys, store.lookup(keys), fids, np.ones((len(keys), 2)), np.ones((len(keys), 2)))
    snapshot = store.snapshot(store.lookup(np.arange(5000)))
    more = np.arange(1, 5000, 3)
    store.write(more, store.lookup(more), np.tile(np.arange(2), (len(more), 1)), np.ones((len(more), 2)),
                np.ones((len(more), 2)))
    assert len(store) == len(keys) + len(more) and 4 in store
    store.restore(snapshot)
    store.check()
    assert len(store) == len(keys) and 4 not in store and 3 in store
    np.testing.assert_array_equal(store.lookup(more), -1)
    with pytest.raises(ValueError, match="entity key 7 is repeated"):
        store.write(np.array([7, 7]), np.array([-1, -1]), np.zeros((2, 1), np.int64), np.ones((2, 1)), np.ones((2, 1)))
    store.check()
    assert 7 not in store and len(store) == len(keys)
    with pytest.raises(TypeError, match="key type"):
        store.lookup(np.array(["a"]))
    with pytest.raises(KeyError, match="not in the model"):
        store.get("a")


def test_native_table_helpers_end_their_probes_in_a_full_table():
    """hash_lookup and hash_insert on a table with no empty entry (IntKeyIndex never lets one fill up) end after
    one pass over it: an absent key is -1, an insert is a ValueError, a held key is found."""
    assert kernels.available(), f"the native helpers are not built: {kernels.build_error()}"
    table_keys, table_slots = np.zeros(4, np.int64), np.full(4, -1, np.int64)
    assert kernels.hash_insert(table_keys, table_slots, np.array([10, 11, 12, 13]), np.arange(4)) == -1
    out = np.empty(3, np.int64)
    kernels.hash_lookup(table_keys, table_slots, np.array([12, 99, 10]), out)
    np.testing.assert_array_equal(out, [2, -1, 0])
    with pytest.raises(ValueError, match="full"):
        kernels.hash_insert(table_keys, table_slots, np.array([99]), np.array([4]))
    assert kernels.hash_insert(table_keys, table_slots, np.array([11]), np.array([9])) == 0  # held: the clash


@pytest.mark.parametrize("keys", [np.arange(0, 300, 3), np.array([f"user-{i}" for i in range(100)])])
def test_a_store_pickled_with_a_dict_map_loads_into_a_key_index(keys):
    """A store pickled before the key index (its state holds a ``_slot_of`` dict) loads with its keys in an index."""
    import pickle

    store = EntityStore(np.float64, None)
    store.write(keys, store.lookup(keys), np.zeros((len(keys), 1), np.int64), np.ones((len(keys), 1)), None)
    state = store.__getstate__()
    old = dict(state)
    del old["_index"]
    old["_slot_of"] = {k: i for i, k in enumerate(state["_keys"])}
    loaded = EntityStore.__new__(EntityStore)
    loaded.__setstate__(old)
    loaded.check()
    np.testing.assert_array_equal(loaded.lookup(keys[::-1]), np.arange(len(keys))[::-1])
    assert isinstance(loaded._index, IntKeyIndex if keys.dtype.kind == "i" else DictKeyIndex)
    again = pickle.loads(pickle.dumps(loaded))
    again.check()
    np.testing.assert_array_equal(again.lookup(keys), np.arange(len(keys)))


@pytest.mark.parametrize("path", PATHS)
def test_an_interrupted_insert_keeps_none_of_its_keys(path, monkeypatch):
    """An interrupt inside the table's insert (here: in the helper) leaves the index with none of the keys."""
    _use(path, monkeypatch)
    index = IntKeyIndex()
    index.insert(np.arange(50), 0)

    real, calls = kernels.hash_insert, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the cleanup's own inserts run
            return real(*args)
        args[1][:] = np.where(args[1] < 0, 999, args[1])  # a half-done insert: entries taken
        raise KeyboardInterrupt

    monkeypatch.setattr(kernels, "hash_insert", interrupted)
    monkeypatch.setattr(IntKeyIndex, "_insert_numpy", lambda self, v, s: interrupted(self.table_keys,
                                                                                      self.table_slots, v, s))
    with pytest.raises(KeyboardInterrupt):
        index.insert(np.arange(100, 110), 50)
    monkeypatch.undo()
    assert len(index) == 50 and not (index.table_slots >= 50).any()  # no entry of the interrupted insert is left
    np.testing.assert_array_equal(index.lookup(np.arange(50)), np.arange(50))
    np.testing.assert_array_equal(index.lookup(np.arange(100, 110)), -1)
