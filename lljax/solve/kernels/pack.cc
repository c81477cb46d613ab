// Host-side packing helpers of lljax (plain CPython through the buffer protocol; no XLA, no NumPy C API).
//
// pack_rows scatters a block's sparse rows into its padded dense design matrix in one pass over the
// nonzeros. It does what lljax/rounds/round.py's NumPy path does for a block (Round.build: Subspaces.local_index with
// the rank-in-row guess, then a bincount of the values into (E * N * D) cells), without its dozen
// temporaries of the block's nonzero count: each nonzero's local column is its rank in its row when the
// entity's subspace has that feature there (checked), else its entry in a per-thread column table (feature spaces
// of up to 2^22 ids), else subspace_column's search of the entity's sorted keys (newton_common.h).
// Values of repeated (row, feature) pairs add up, as bincount does; the sum is in float64.
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif
#include <thread>
#include <vector>

#include "newton_common.h"
#include "py_buffer.h"

namespace {

using lljax_py::View;

using lljax_native::subspace_column;

// Where a nonzero goes. Dense: out[cell * D + col] += value (repeated columns add up, in float64).
// Slots: the row's rank-th slot gets (col, value) (a SparseBlock's layout; K slots per row).
// `row` places a whole row whose j-th nonzero is in column j (the checked common case).
struct DenseSink {
  double* out;
  int64_t D;
  void operator()(int64_t cell, int64_t, int64_t col, double value) const { out[cell * D + col] += value; }
  template <typename V>
  void row(int64_t cell, int64_t first, const V* values, int64_t m) const {
    double* to = out + cell * D + first;
    for (int64_t j = 0; j < m; j++) to[j] += static_cast<double>(values[j]);
  }
};
struct SlotSink {
  double* vals;
  int32_t* cols;
  int64_t K;
  void operator()(int64_t cell, int64_t rank, int64_t col, double value) const {
    cols[cell * K + rank] = static_cast<int32_t>(col);
    vals[cell * K + rank] = value;
  }
  template <typename V>
  void row(int64_t cell, int64_t first, const V* values, int64_t m) const {
    for (int64_t j = 0; j < m; j++) (*this)(cell, first + j, first + j, static_cast<double>(values[j]));
  }
};

// Local columns of the current lane's features, for lanes whose rows do not list their subspace in
// order (wide entities: each row has a few of many features, so the rank-in-row guess misses and a
// binary search costs ~100 ns per nonzero): tag[feature] = generation << 24 | column, set when the lane
// changes; a tag of an older generation means "not in this lane's subspace". One table per thread,
// kept between calls (8 bytes per feature id, for feature spaces up to kTableMax ids).
struct ColumnTable {
  static constexpr int64_t kTableMax = int64_t(1) << 22;
  std::vector<uint64_t> tag;
  uint64_t generation = 0;
  int64_t lane = -1;

  bool usable(int64_t stride, int64_t D) const { return stride <= kTableMax && D < (int64_t(1) << 24); }
  void enter(int64_t new_lane, const int64_t* keys, int64_t lo, int64_t size, int64_t base, int64_t stride) {
    if (static_cast<int64_t>(tag.size()) < stride) tag.assign(static_cast<size_t>(stride), 0);
    generation++;
    lane = new_lane;
    for (int64_t c = 0; c < size; c++) tag[keys[lo + c] - base] = generation << 24 | static_cast<uint64_t>(c);
  }
  int64_t find(int64_t feature) const {
    const uint64_t t = tag[feature];
    return (t >> 24) == generation ? static_cast<int64_t>(t & ((uint64_t(1) << 24) - 1)) : -1;
  }
};

// Returns -1 on success, else the position (in rows) of a row with a feature outside its subspace.
// `leading` >= 0: every row also has feature `leading` (value 1) as its first entry, before the stored
// nonzeros (the dataset's implicit intercept); the stored ones then have ranks 1, 2, ... in the row.
template <typename F, typename V, typename Sink>
int64_t scatter(const int64_t* indptr, const F* feature_ids, const V* values, const int64_t* rows,
                const int64_t* row_cell, const int64_t* row_lane, int64_t n_rows, const int64_t* keys,
                const int64_t* start, const int64_t* sizes, int64_t stride, int64_t D, int64_t leading,
                const Sink& sink, int64_t* bad_feature) {
  thread_local ColumnTable table;
  const bool use_table = table.usable(stride, D);
  table.lane = -1;
  const int64_t shift = leading >= 0 ? 1 : 0;
  for (int64_t i = 0; i < n_rows; i++) {
    const int64_t r = rows[i], lane = row_lane[i], cell = row_cell[i];
    const int64_t lo = start[lane], size = sizes[lane], base = lane * stride;
    const int64_t k0 = indptr[r], k1 = indptr[r + 1];
    // Local column of `feature`: its rank in the row when the subspace has it there, else looked up (in the
    // lane's column table, else subspace_column's).
    int64_t walk = 0;
    auto column = [&](int64_t feature, int64_t rank) -> int64_t {
      const int64_t key = base + feature;
      if (rank < size && keys[lo + rank] == key) {
        walk = rank + 1;
        return rank;
      }
      if (use_table && feature >= 0 && feature < stride) {
        if (table.lane != lane) table.enter(lane, keys, lo, size, base, stride);
        return table.find(feature);
      }
      return subspace_column(keys, lo, size, key, walk);
    };
    if (shift) {
      const int64_t col = column(leading, 0);
      if (col < 0) {
        *bad_feature = leading;
        return i;
      }
      sink(cell, 0, col, 1.0);
    }
    // The usual layout: the row lists the first features of its subspace, in order.
    if (k1 - k0 + shift <= size && (shift == 0 || keys[lo] == base + leading)) {
      bool in_order = true;
      for (int64_t k = k0; k < k1; k++) {
        in_order &= keys[lo + shift + (k - k0)] == base + static_cast<int64_t>(feature_ids[k]);
      }
      if (in_order) {
        sink.row(cell, shift, values + k0, k1 - k0);
        continue;
      }
    }
    for (int64_t k = k0; k < k1; k++) {
      const int64_t feature = static_cast<int64_t>(feature_ids[k]);
      const int64_t col = column(feature, shift + k - k0);
      if (col < 0) {
        *bad_feature = feature;
        return i;
      }
      sink(cell, shift + k - k0, col, static_cast<double>(values[k]));
    }
  }
  return -1;
}

template <typename Sink>
int64_t scatter_any(const View& fids, const View& values, const int64_t* const* a, int64_t n_rows, int64_t stride,
                    int64_t D, int64_t leading, const Sink& sink, int64_t* bad_feature) {
  const bool f32 = fids.buffer.itemsize == 4, v32 = values.buffer.itemsize == 4;
  if (f32 && v32) {
    return scatter(a[0], fids.data<int32_t>(), values.data<float>(), a[1], a[2], a[3], n_rows, a[4], a[5], a[6],
                   stride, D, leading, sink, bad_feature);
  } else if (f32) {
    return scatter(a[0], fids.data<int32_t>(), values.data<double>(), a[1], a[2], a[3], n_rows, a[4], a[5], a[6],
                   stride, D, leading, sink, bad_feature);
  } else if (v32) {
    return scatter(a[0], fids.data<int64_t>(), values.data<float>(), a[1], a[2], a[3], n_rows, a[4], a[5], a[6],
                   stride, D, leading, sink, bad_feature);
  }
  return scatter(a[0], fids.data<int64_t>(), values.data<double>(), a[1], a[2], a[3], n_rows, a[4], a[5], a[6],
                 stride, D, leading, sink, bad_feature);
}

}  // namespace

// pack_rows(indptr, feature_ids, values, rows, row_cell, row_lane, keys, start, sizes, stride, D, out,
//           K, slot_cols, leading): K = 0: out (cells * D float64) += the dense rows; K > 0: out (cells * K
// float64) and slot_cols (cells * K int32) get each row's nonzeros as (local column, value) slots.
// leading >= 0: each row starts with feature `leading` of value 1 (the implicit intercept), then its nonzeros.
PyObject* lljax_pack_rows(PyObject*, PyObject* args) {
  PyObject *o_indptr, *o_fids, *o_values, *o_rows, *o_cell, *o_lane, *o_keys, *o_start, *o_sizes, *o_out, *o_cols;
  long long stride, D, K, leading;
  if (!PyArg_ParseTuple(args, "OOOOOOOOOLLOLOL", &o_indptr, &o_fids, &o_values, &o_rows, &o_cell, &o_lane, &o_keys,
                        &o_start, &o_sizes, &stride, &D, &o_out, &K, &o_cols, &leading)) {
    return nullptr;
  }
  View indptr, fids, values, rows, cell, lane, keys, start, sizes, out, slot_cols;
  if (!indptr.get(o_indptr, "indptr", "q", false) || !fids.get(o_fids, "feature_ids", "iq", false) ||
      !values.get(o_values, "values", "df", false) || !rows.get(o_rows, "rows", "q", false) ||
      !cell.get(o_cell, "row_cell", "q", false) || !lane.get(o_lane, "row_lane", "q", false) ||
      !keys.get(o_keys, "keys", "q", false) || !start.get(o_start, "start", "q", false) ||
      !sizes.get(o_sizes, "sizes", "q", false) || !out.get(o_out, "out", "d", true) ||
      (K > 0 && !slot_cols.get(o_cols, "slot_cols", "i", true))) {
    return nullptr;
  }
  const int64_t n_rows = rows.size(), width = K > 0 ? K : D;
  if (cell.size() != n_rows || lane.size() != n_rows || fids.size() != values.size() ||
      start.size() < sizes.size() || D < 1 || stride < 1 || K < 0 || (K > 0 && slot_cols.size() != out.size()) ||
      leading >= stride) {
    PyErr_SetString(PyExc_ValueError, "pack_rows: inconsistent argument sizes");
    return nullptr;
  }
  // Bounds, checked once so that the loop cannot read or write outside the buffers.
  const int64_t n_data = indptr.size() - 1, n_lanes = sizes.size(), n_cells = out.size() / width;
  const int64_t* ip = indptr.data<int64_t>();
  for (int64_t i = 0; i < n_rows; i++) {
    const int64_t r = rows.data<int64_t>()[i], l = lane.data<int64_t>()[i], c = cell.data<int64_t>()[i];
    if (r < 0 || r >= n_data || l < 0 || l >= n_lanes || c < 0 || c >= n_cells) {
      PyErr_Format(PyExc_IndexError, "pack_rows: row %lld (lane %lld, cell %lld) out of range", (long long)r,
                   (long long)l, (long long)c);
      return nullptr;
    }
    if (ip[r] < 0 || ip[r] > ip[r + 1] || ip[r + 1] > fids.size() ||
        (K > 0 && ip[r + 1] - ip[r] + (leading >= 0 ? 1 : 0) > K)) {
      PyErr_Format(PyExc_IndexError, "pack_rows: indptr of row %lld out of range", (long long)r);
      return nullptr;
    }
  }
  for (int64_t l = 0; l < n_lanes; l++) {
    const int64_t s = start.data<int64_t>()[l], z = sizes.data<int64_t>()[l];
    if (s < 0 || z < 0 || z > D || s + z > keys.size()) {
      PyErr_Format(PyExc_IndexError, "pack_rows: subspace of lane %lld out of range", (long long)l);
      return nullptr;
    }
  }
  int64_t bad = -1, bad_feature = 0;
  const int64_t* a[] = {ip, rows.data<int64_t>(), cell.data<int64_t>(), lane.data<int64_t>(),
                        keys.data<int64_t>(), start.data<int64_t>(), sizes.data<int64_t>()};
  Py_BEGIN_ALLOW_THREADS;
  if (K > 0) {
    bad = scatter_any(fids, values, a, n_rows, stride, D, leading,
                      SlotSink{out.data<double>(), slot_cols.data<int32_t>(), K}, &bad_feature);
  } else {
    bad = scatter_any(fids, values, a, n_rows, stride, D, leading, DenseSink{out.data<double>(), D}, &bad_feature);
  }
  Py_END_ALLOW_THREADS;
  if (bad >= 0) {
    PyErr_Format(PyExc_ValueError, "pack_rows: feature %lld of dataset row %lld is not in its entity's subspace",
                 (long long)bad_feature, (long long)rows.data<int64_t>()[bad]);
    return nullptr;
  }
  Py_RETURN_NONE;
}

// subspace_keys(indptr, feature_ids, row_order, row_start, prior_feature_ids, prior_start, stride, threads, sizes,
//               repeats)
//   -> bytearray of int64: the sorted distinct keys entity * stride + feature id over every entity's
// nonzeros and its prior features (sizes, (U,) int64, gets each entity's count of them), as
// lljax/rounds/subspaces.py's local_subspaces (NumPy: chunked sort).
// Entity by entity (rows in row_order, grouped by row_start; prior features grouped by prior_start), a
// feature is taken once by stamping mark[feature] with the entity (a row whose ids are those of the entity's
// row before it, byte for byte, is skipped, and repeats (n,) uint8 gets 1 at its position in row_order, else 0:
// the kernel's row loader then need not read its ids); each entity's few features are then
// sorted. One pass over the nonzeros, a mark array of `stride` uint32 per thread (up to `threads`, over
// contiguous ranges of entities).
PyObject* lljax_subspace_keys(PyObject*, PyObject* args) {
  PyObject *o_indptr, *o_fids, *o_order, *o_start, *o_pfids, *o_pstart, *o_sizes, *o_repeats;
  long long stride, threads;
  if (!PyArg_ParseTuple(args, "OOOOOOLLOO", &o_indptr, &o_fids, &o_order, &o_start, &o_pfids, &o_pstart, &stride,
                        &threads, &o_sizes, &o_repeats)) {
    return nullptr;
  }
  View indptr, fids, order, start, pfids, pstart, sizes, repeats;
  if (!indptr.get(o_indptr, "indptr", "q", false) ||
      !fids.get(o_fids, "feature_ids", "iq", false) || !order.get(o_order, "row_order", "q", false) ||
      !start.get(o_start, "row_start", "q", false) || !pfids.get(o_pfids, "prior_feature_ids", "q", false) ||
      !pstart.get(o_pstart, "prior_start", "q", false) || !sizes.get(o_sizes, "sizes", "q", true) ||
      !repeats.get(o_repeats, "repeats", "B", true)) {
    return nullptr;
  }
  const int64_t n = order.size(), U = start.size() - 1;
  if (repeats.size() != n) {
    PyErr_Format(PyExc_ValueError, "subspace_keys: repeats has %lld entries, row_order %lld", (long long)repeats.size(),
                 (long long)n);
    return nullptr;
  }
  if (stride < 1 || stride > (int64_t(1) << 30) || U < 0 || U >= (int64_t(1) << 32) - 1 || indptr.size() != n + 1 ||
      pstart.size() != U + 1 || sizes.size() != U) {
    PyErr_SetString(PyExc_ValueError, "subspace_keys: inconsistent argument sizes");
    return nullptr;
  }
  const int64_t *ip = indptr.data<int64_t>(), *ord = order.data<int64_t>(), *st = start.data<int64_t>();
  const int64_t *pf = pfids.data<int64_t>(), *ps = pstart.data<int64_t>();
  int64_t* size_of = sizes.data<int64_t>();
  uint8_t* repeat = repeats.data<uint8_t>();
  const bool f32 = fids.buffer.itemsize == 4;
  // Bounds once: row_start and prior_start increasing within their arrays, rows and features in range.
  if (st[0] != 0 || st[U] != n || ps[0] != 0 || ps[U] != pfids.size() || ip[0] < 0 || ip[n] > fids.size()) {
    PyErr_SetString(PyExc_ValueError, "subspace_keys: offsets out of range");
    return nullptr;
  }
  for (int64_t u = 0; u < U; u++) {
    if (st[u] > st[u + 1] || ps[u] > ps[u + 1]) {
      PyErr_SetString(PyExc_ValueError, "subspace_keys: offsets not increasing");
      return nullptr;
    }
  }
  for (int64_t i = 0; i < n; i++) {
    if (ord[i] < 0 || ord[i] >= n || ip[i] > ip[i + 1]) {
      PyErr_SetString(PyExc_ValueError, "subspace_keys: row_order or indptr out of range");
      return nullptr;
    }
  }
  // Entities in `parts` contiguous ranges of about equal row counts, one thread each, each with its own
  // mark array; the ranges' keys are concatenated in order.
  // Each thread's mark array takes stride * 4 bytes: at most 256 MiB of them in all.
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>({threads, U / 4096 + 1, (int64_t(1) << 26) / std::max<int64_t>(stride, 1)}));
  std::vector<std::vector<int64_t>> keys_of(static_cast<size_t>(parts));
  std::vector<char> bad_of(static_cast<size_t>(parts), 0), failed_of(static_cast<size_t>(parts), 0);
  std::vector<int64_t> bounds(static_cast<size_t>(parts + 1), U);
  bounds[0] = 0;
  for (int64_t p = 1; p < parts; p++) bounds[p] = std::lower_bound(st, st + U, n * p / parts) - st;
  auto run_part = [&](int64_t p) {
    std::vector<uint32_t> mark(static_cast<size_t>(stride), 0);
    std::vector<int64_t> mine;
    std::vector<int64_t>& keys = keys_of[p];
    keys.reserve(static_cast<size_t>(st[bounds[p + 1]] - st[bounds[p]]));
    const int64_t row_end = st[bounds[p + 1]];  // (the part's rows: row_order positions st[u0] to row_end - 1)
    bool bad = false;
    for (int64_t u = bounds[p]; u < bounds[p + 1] && !bad; u++) {
      const uint32_t stamp = static_cast<uint32_t>(u + 1);
      mine.clear();
      auto take = [&](int64_t f) {
        if (f < 0 || f >= stride) {
          bad = true;
        } else if (mark[f] != stamp) {
          mark[f] = stamp;
          mine.push_back(f);
        }
      };
      // A row that lists the same features as the entity's row before it (the usual layout: every row of an
      // entity lists its whole subspace) adds nothing: compared as bytes, it is skipped.
      const char* last = nullptr;
      size_t last_bytes = 0;
      for (int64_t i = st[u]; i < st[u + 1]; i++) {
        // Rows not grouped in the data lie anywhere: the row 8 positions ahead has its ids asked for (its indptr
        // entry was, 8 positions before that), so that their cache misses overlap.
        if (i + 16 < row_end) __builtin_prefetch(ip + ord[i + 16]);
        if (i + 8 < row_end) {
          __builtin_prefetch(static_cast<const char*>(fids.buffer.buf) + ip[ord[i + 8]] * fids.buffer.itemsize);
        }
        const int64_t r = ord[i];
        const char* row = static_cast<const char*>(fids.buffer.buf) + ip[r] * fids.buffer.itemsize;
        const size_t bytes = static_cast<size_t>(ip[r + 1] - ip[r]) * fids.buffer.itemsize;
        const bool same = last != nullptr && bytes == last_bytes && std::memcmp(row, last, bytes) == 0;
        repeat[i] = same;
        if (same) continue;
        last = row, last_bytes = bytes;
        for (int64_t k = ip[r]; k < ip[r + 1]; k++) {
          take(f32 ? static_cast<int64_t>(fids.data<int32_t>()[k]) : fids.data<int64_t>()[k]);
        }
      }
      for (int64_t k = ps[u]; k < ps[u + 1]; k++) take(pf[k]);
      std::sort(mine.begin(), mine.end());
      for (const int64_t f : mine) keys.push_back(u * stride + f);
      size_of[u] = static_cast<int64_t>(mine.size());
    }
    bad_of[p] = bad;
  };
  auto run = [&](int64_t p) noexcept {
    try {
      run_part(p);
    } catch (const std::exception&) {  // out of memory: reported once every thread is joined
      failed_of[p] = 1;
    }
  };
  Py_BEGIN_ALLOW_THREADS;
  std::vector<std::thread> helpers;
  int64_t started = 1;
  try {
    for (; started < parts; started++) helpers.emplace_back(run, started);
  } catch (const std::exception&) {  // no thread to be had: the calling thread runs the rest
  }
  run(0);
  for (int64_t p = started; p < parts; p++) run(p);
  for (auto& t : helpers) t.join();
  Py_END_ALLOW_THREADS;
  if (std::any_of(failed_of.begin(), failed_of.end(), [](char f) { return f != 0; })) return PyErr_NoMemory();
  const bool bad = std::any_of(bad_of.begin(), bad_of.end(), [](char b) { return b != 0; });
  size_t total = 0;
  for (const auto& k : keys_of) total += k.size();
  if (bad) {
    PyErr_SetString(PyExc_ValueError, "subspace_keys: a feature id is outside [0, stride)");
    return nullptr;
  }
  PyObject* out = PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total * sizeof(int64_t)));
  if (out == nullptr) return nullptr;
  char* at = PyByteArray_AS_STRING(out);
  for (const auto& k : keys_of) {
    if (!k.empty()) std::memcpy(at, k.data(), k.size() * sizeof(int64_t));
    at += k.size() * sizeof(int64_t);
  }
  return out;
}

// group_rows(codes, row_start, row_order): the rows grouped by entity, stable: row_order (n,) int64 gets each
// entity's rows in increasing order at row_start[code] onwards, a counting sort in one pass over the codes (n,
// int64 in [0, U)), what np.argsort(codes, kind="stable") gives; row_start (U + 1,) the offsets their counts
// make. Raises IndexError on a code outside [0, U) and ValueError when the counts differ from row_start.
PyObject* lljax_group_rows(PyObject*, PyObject* args) {
  PyObject *o_codes, *o_start, *o_order;
  if (!PyArg_ParseTuple(args, "OOO", &o_codes, &o_start, &o_order)) return nullptr;
  View codes, start, order;
  if (!codes.get(o_codes, "codes", "q", false) || !start.get(o_start, "row_start", "q", false) ||
      !order.get(o_order, "row_order", "q", true)) {
    return nullptr;
  }
  const int64_t n = codes.size(), U = start.size() - 1;
  if (U < 0 || order.size() != n) {
    PyErr_SetString(PyExc_ValueError, "group_rows: inconsistent argument sizes");
    return nullptr;
  }
  const int64_t *c = codes.data<int64_t>(), *st = start.data<int64_t>();
  if (st[0] != 0 || st[U] != n) {
    PyErr_SetString(PyExc_ValueError, "group_rows: row_start does not run from 0 to the number of rows");
    return nullptr;
  }
  for (int64_t u = 0; u < U; u++) {
    if (st[u] > st[u + 1]) {
      PyErr_SetString(PyExc_ValueError, "group_rows: row_start is not increasing");
      return nullptr;
    }
  }
  std::vector<int64_t> next;
  try {
    next.assign(st, st + U);
  } catch (const std::exception&) {
    return PyErr_NoMemory();
  }
  int64_t* out = order.data<int64_t>();
  int64_t bad = -1, full = -1;
  Py_BEGIN_ALLOW_THREADS;
  for (int64_t i = 0; i < n; i++) {
    const int64_t u = c[i];
    if (u < 0 || u >= U) {
      bad = i;
      break;
    }
    if (next[u] >= st[u + 1]) {  // more rows of u than row_start makes room for
      full = i;
      break;
    }
    out[next[u]++] = i;
  }
  Py_END_ALLOW_THREADS;
  if (bad >= 0) {
    PyErr_Format(PyExc_IndexError, "group_rows: code %lld of row %lld is outside [0, %lld)", (long long)c[bad],
                 (long long)bad, (long long)U);
    return nullptr;
  }
  if (full >= 0) {
    PyErr_Format(PyExc_ValueError, "group_rows: entity %lld has more rows than row_start gives it (row %lld)",
                 (long long)c[full], (long long)full);
    return nullptr;
  }
  Py_RETURN_NONE;  // (every row placed and none past its entity's range: so every range is exactly filled)
}

namespace {

// The loop of block_rows (arguments checked by the caller). A block's entities lie anywhere in the
// dataset, so each lane's first rows are cache misses: a few lanes ahead are prefetched, one level of
// indirection per distance (row_start, then row_order, then the three columns). False if a row is out of range.
template <typename T>
bool gather_block_rows(const int64_t* ord, int64_t n, const int64_t* st, const int64_t* en, int64_t E, int64_t N,
                       const View* sources, const View* dests, int64_t* rows, int64_t* lane, int64_t* cell) {
  const T* src[3] = {sources[0].data<T>(), sources[1].data<T>(), sources[2].data<T>()};
  T* dst[3] = {dests[0].data<T>(), dests[1].data<T>(), dests[2].data<T>()};
  int64_t i = 0;
  for (int64_t l = 0; l < E; l++) {
    if (l + 16 < E) __builtin_prefetch(st + en[l + 16]);
    if (l + 8 < E) __builtin_prefetch(ord + st[en[l + 8]]);
    if (l + 4 < E) {
      const int64_t r = ord[st[en[l + 4]]];
      for (int c = 0; c < 3; c++) __builtin_prefetch(src[c] + (r >= 0 && r < n ? r : 0));
    }
    const int64_t u = en[l];
    for (int64_t k = st[u]; k < st[u + 1]; k++, i++) {
      const int64_t r = ord[k], at = l * N + (k - st[u]);
      if (r < 0 || r >= n) return false;
      rows[i] = r;
      lane[i] = l;
      cell[i] = at;
      for (int c = 0; c < 3; c++) dst[c][at] = src[c][r];
    }
  }
  return true;
}

}  // namespace

// block_rows(row_order, row_start, entities, N, label, weight, offset, y, w, o, rows, lane, cell): the dataset
// rows of the block's entities, entity by entity (in row_order's order), into `rows`; the lane of each (its
// entity's position in `entities`) into `lane` and its cell lane * N + rank into `cell` (int64, as many as the
// entities have rows); y, w, o (E * N) get each row's label, weight and offset at its cell. lljax/rounds/round.py's
// block_rows (its NumPy path) in one pass.
PyObject* lljax_block_rows(PyObject*, PyObject* args) {
  PyObject *o_order, *o_start, *o_ents, *o_src[3], *o_dst[3], *o_idx[3];
  long long N;
  if (!PyArg_ParseTuple(args, "OOOLOOOOOOOOO", &o_order, &o_start, &o_ents, &N, &o_src[0], &o_src[1], &o_src[2],
                        &o_dst[0], &o_dst[1], &o_dst[2], &o_idx[0], &o_idx[1], &o_idx[2])) {
    return nullptr;
  }
  static const char* names[] = {"label", "weight", "offset", "y", "w", "o", "rows", "lane", "cell"};
  View order, start, ents, src[3], dst[3], idx[3];
  if (!order.get(o_order, "row_order", "q", false) || !start.get(o_start, "row_start", "q", false) ||
      !ents.get(o_ents, "entities", "q", false)) {
    return nullptr;
  }
  char code = 0;
  for (int c = 0; c < 3; c++) {
    const char s = src[c].get(o_src[c], names[c], "df", false), d = dst[c].get(o_dst[c], names[3 + c], "df", true);
    if (s == 0 || d == 0 || !idx[c].get(o_idx[c], names[6 + c], "q", true)) return nullptr;
    if ((code != 0 && s != code) || d != s || src[c].size() != order.size() || dst[c].size() != dst[0].size()) {
      PyErr_SetString(PyExc_ValueError, "block_rows: the row columns and outputs must share one dtype and size");
      return nullptr;
    }
    code = s;
  }
  const int64_t n = order.size(), U = start.size() - 1, E = ents.size();
  const int64_t *ord = order.data<int64_t>(), *st = start.data<int64_t>(), *en = ents.data<int64_t>();
  if (N < 1 || U < 0 || dst[0].size() % N != 0 || E > dst[0].size() / N) {
    PyErr_SetString(PyExc_ValueError, "block_rows: inconsistent argument sizes");
    return nullptr;
  }
  int64_t total = 0;
  for (int64_t l = 0; l < E; l++) {  // bounds once, so that the copies cannot leave their buffers
    const int64_t u = en[l];
    if (u < 0 || u >= U || st[u] < 0 || st[u] > st[u + 1] || st[u + 1] > n || st[u + 1] - st[u] > N) {
      PyErr_Format(PyExc_IndexError, "block_rows: entity %lld (lane %lld) out of range or with more than N rows",
                   (long long)u, (long long)l);
      return nullptr;
    }
    total += st[u + 1] - st[u];
  }
  if (idx[0].size() != total || idx[1].size() != total || idx[2].size() != total) {
    PyErr_SetString(PyExc_ValueError, "block_rows: rows, lane and cell must hold the entities' row count");
    return nullptr;
  }
  int64_t *rows = idx[0].data<int64_t>(), *lane = idx[1].data<int64_t>(), *cell = idx[2].data<int64_t>();
  bool ok = true;
  Py_BEGIN_ALLOW_THREADS;
  ok = code == 'd' ? gather_block_rows<double>(ord, n, st, en, E, N, src, dst, rows, lane, cell)
                   : gather_block_rows<float>(ord, n, st, en, E, N, src, dst, rows, lane, cell);
  Py_END_ALLOW_THREADS;
  if (!ok) {
    PyErr_SetString(PyExc_IndexError, "block_rows: row_order out of range");
    return nullptr;
  }
  Py_RETURN_NONE;
}

namespace {

// The loop of scatter_priors (arguments checked by the caller; `col` has room for d columns). Row rows[i]'s d
// features are matched with its lane's sorted subspace keys by subspace_column (a merge walk when they are
// sorted, as the store keeps them; any order works); false if one is not in the subspace.
template <typename T>
bool place_priors(const int64_t* lanes, const int64_t* rows, int64_t g, const int64_t* fids, const T* means,
                  const T* precision, int kind, int64_t d, const int64_t* keys, const int64_t* start,
                  const int64_t* sizes, int64_t stride, int64_t D, T* mean_out, T* precision_out, int64_t* col,
                  int64_t* bad_row) {
  const int64_t T_ = d * (d + 1) / 2;
  for (int64_t i = 0; i < g; i++) {
    const int64_t l = lanes[i], lo = start[l], size = sizes[l], base = l * stride, r = rows[i];
    int64_t walk = 0;
    for (int64_t k = 0; k < d; k++) {
      const int64_t at = subspace_column(keys, lo, size, base + fids[r * d + k], walk);
      if (at < 0) {
        *bad_row = i;
        return false;
      }
      col[k] = at;
    }
    T* m = mean_out + l * D;
    for (int64_t k = 0; k < d; k++) m[col[k]] = means[r * d + k];
    if (kind == 1) {
      T* p = precision_out + l * D;
      for (int64_t k = 0; k < d; k++) p[col[k]] = precision[r * d + k];
    } else if (kind == 2) {
      T* p = precision_out + l * D * D;
      const T* row = precision + r * T_;
      for (int64_t a = 0; a < d; a++) {
        const int64_t ca = col[a];
        for (int64_t b = a; b < d; b++) {
          const T v = *row++;
          p[ca * D + col[b]] = v;
          p[col[b] * D + ca] = v;
        }
      }
    }
  }
  return true;
}

}  // namespace

// scatter_priors(lanes, rows, feature_ids, means, precision, kind, d, keys, start, sizes, stride, D, mean_out,
// precision_out): g stored rows of width d, rows[i] of the G rows of feature_ids (G, d), into a block's prior
// arrays. Row rows[i] (lane lanes[i]; feature ids distinct, all >= 0, best sorted) puts mean k at
// mean_out[lane, c_k], c_k the feature's column in the lane's subspace (keys lane * stride + feature id, sorted,
// as pack_rows reads them); kind 1: precision (G, d) at precision_out[lane, c_k]; kind 2: precision
// (G, d (d + 1) / 2), upper triangles row by row, at precision_out[lane, c_a, c_b] and its mirror; kind 0: no
// precision. lljax/rounds/round.py's `priors` does the same with NumPy.
PyObject* lljax_scatter_priors(PyObject*, PyObject* args) {
  PyObject *o_lanes, *o_rows, *o_fids, *o_means, *o_prec, *o_keys, *o_start, *o_sizes, *o_mean_out, *o_prec_out;
  int kind;
  long long stride, D, d;
  if (!PyArg_ParseTuple(args, "OOOOOiLOOOLLOO", &o_lanes, &o_rows, &o_fids, &o_means, &o_prec, &kind, &d, &o_keys,
                        &o_start, &o_sizes, &stride, &D, &o_mean_out, &o_prec_out)) {
    return nullptr;
  }
  View lanes, rows, fids, means, prec, keys, start, sizes, mean_out, prec_out;
  if (kind < 0 || kind > 2) {
    PyErr_SetString(PyExc_ValueError, "scatter_priors: kind is 0, 1 or 2");
    return nullptr;
  }
  const char code = means.get(o_means, "means", "df", false);
  if (!lanes.get(o_lanes, "lanes", "q", false) || !rows.get(o_rows, "rows", "q", false) ||
      !fids.get(o_fids, "feature_ids", "q", false) || code == 0 ||
      !keys.get(o_keys, "keys", "q", false) || !start.get(o_start, "start", "q", false) ||
      !sizes.get(o_sizes, "sizes", "q", false) || mean_out.get(o_mean_out, "mean_out", "df", true) != code ||
      (kind > 0 && (prec.get(o_prec, "precision", "df", false) != code ||
                    prec_out.get(o_prec_out, "precision_out", "df", true) != code))) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "scatter_priors: means and outputs differ in dtype");
    return nullptr;
  }
  // E lanes have a subspace; the outputs may have more (padding lanes, untouched). Rows rows[i] of the G stored.
  const int64_t g = lanes.size(), E = sizes.size(), E_out = D > 0 ? mean_out.size() / D : 0;
  const int64_t G = d > 0 ? fids.size() / d : 0;
  const int64_t per_row = kind == 2 ? d * (d + 1) / 2 : d;
  if (d < 1 || rows.size() != g || fids.size() != G * d || means.size() != G * d ||
      (kind > 0 && prec.size() != G * per_row) || D < 1 ||
      d > D || stride < 1 || start.size() < E || mean_out.size() != E_out * D || E_out < E ||
      (kind > 0 && prec_out.size() != E_out * (kind == 2 ? D * D : D))) {
    PyErr_SetString(PyExc_ValueError, "scatter_priors: inconsistent argument sizes");
    return nullptr;
  }
  const int64_t *ln = lanes.data<int64_t>(), *rw = rows.data<int64_t>(), *f = fids.data<int64_t>(),
                *st = start.data<int64_t>(), *sz = sizes.data<int64_t>();
  for (int64_t i = 0; i < g; i++) {  // bounds once, so that the loop cannot leave its buffers
    if (ln[i] < 0 || ln[i] >= E) {
      PyErr_Format(PyExc_IndexError, "scatter_priors: lane %lld out of range", (long long)ln[i]);
      return nullptr;
    }
    if (rw[i] < 0 || rw[i] >= G) {
      PyErr_Format(PyExc_IndexError, "scatter_priors: row %lld out of range", (long long)rw[i]);
      return nullptr;
    }
  }
  for (int64_t l = 0; l < E; l++) {
    if (st[l] < 0 || sz[l] < 0 || sz[l] > D || st[l] + sz[l] > keys.size()) {
      PyErr_Format(PyExc_IndexError, "scatter_priors: subspace of lane %lld out of range", (long long)l);
      return nullptr;
    }
  }
  for (int64_t i = 0; i < g; i++) {
    for (int64_t k = rw[i] * d; k < (rw[i] + 1) * d; k++) {
      if (f[k] < 0 || f[k] >= stride) {
        PyErr_Format(PyExc_ValueError, "scatter_priors: feature id %lld outside [0, stride)", (long long)f[k]);
        return nullptr;
      }
    }
  }
  int64_t bad = -1;
  bool ok;
  std::vector<int64_t> col;
  try {
    col.resize(static_cast<size_t>(d));
  } catch (const std::exception&) {
    return PyErr_NoMemory();
  }
  Py_BEGIN_ALLOW_THREADS;
  if (code == 'd') {
    ok = place_priors<double>(ln, rw, g, f, means.data<double>(), kind > 0 ? prec.data<double>() : nullptr, kind,
                              d,
                              keys.data<int64_t>(), st, sz, stride, D, mean_out.data<double>(),
                              kind > 0 ? prec_out.data<double>() : nullptr, col.data(), &bad);
  } else {
    ok = place_priors<float>(ln, rw, g, f, means.data<float>(), kind > 0 ? prec.data<float>() : nullptr, kind,
                             d,
                             keys.data<int64_t>(), st, sz, stride, D, mean_out.data<float>(),
                             kind > 0 ? prec_out.data<float>() : nullptr, col.data(), &bad);
  }
  Py_END_ALLOW_THREADS;
  if (!ok) {
    PyErr_Format(PyExc_ValueError, "scatter_priors: a feature of stored row %lld (lane %lld) is not in its lane's "
                 "subspace", (long long)rw[bad], (long long)ln[bad]);
    return nullptr;
  }
  Py_RETURN_NONE;
}

namespace {

// The chunks of one field of a store slab (lljax/state/store.py), chunk c a C-contiguous buffer of format `code`
// holding rows chunk_start[c] to chunk_start[c + 1] - 1, each of `row_items` items (not checked when < 0); `who`
// names the caller in errors. Views held until destruction; base[c] is chunk c's first byte.
struct Chunks {
  std::unique_ptr<View[]> views;
  std::vector<char*> base;
  // False with a Python error set.
  bool get(PyObject* list, const char* who, const char* name, char code, const int64_t* st, Py_ssize_t C,
           int64_t row_items, bool writable) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != C) {
      PyErr_Format(PyExc_ValueError, "%s: %s is not a list of %lld chunks", who, name, (long long)C);
      return false;
    }
    views.reset(new (std::nothrow) View[C]);
    if (!views) {
      PyErr_NoMemory();
      return false;
    }
    try {
      base.resize(static_cast<size_t>(C));
    } catch (const std::exception&) {
      PyErr_NoMemory();
      return false;
    }
    const char allowed[2] = {code, 0};
    for (Py_ssize_t c = 0; c < C; c++) {
      if (!views[c].get(PyList_GET_ITEM(list, c), name, allowed, writable)) return false;
      if (st[c] > st[c + 1] || (row_items >= 0 && views[c].size() != (st[c + 1] - st[c]) * row_items)) {
        PyErr_Format(PyExc_ValueError, "%s: %s chunk %lld does not hold rows %lld to %lld of %lld items", who, name,
                     (long long)c, (long long)st[c], (long long)st[c + 1], (long long)row_items);
        return false;
      }
      base[c] = static_cast<char*>(views[c].buffer.buf);
    }
    return true;
  }
};

// The chunk that holds row r (chunk_start non-decreasing, r in [st[0], st[C])).
inline int64_t chunk_of(const int64_t* st, int64_t C, int64_t r) {
  return std::upper_bound(st, st + C + 1, r) - st - 1;
}

}  // namespace

// move_rows(chunks, chunk_start, rows, flat, into_chunks): copies whole rows between a chunked array and a flat one,
// as lljax/state/store.py's slabs keep their fields: chunk c (a C-contiguous array) holds rows chunk_start[c] to
// chunk_start[c + 1] - 1, all chunks and `flat` having the same element format and row length. into_chunks: row i
// of flat (k rows) goes to row rows[i]; else row rows[i] is copied to row i of flat. What _Slab.put_fields and
// take_fields do with NumPy, chunk by chunk, in one call.
PyObject* lljax_move_rows(PyObject*, PyObject* args) {
  PyObject *o_chunks, *o_start, *o_rows, *o_flat;
  int into = 0;
  if (!PyArg_ParseTuple(args, "O!OOOp", &PyList_Type, &o_chunks, &o_start, &o_rows, &o_flat, &into)) return nullptr;
  View start, rows, flat;
  const char code = flat.get(o_flat, "flat", "qidf", !into);
  if (code == 0 || !start.get(o_start, "chunk_start", "q", false) || !rows.get(o_rows, "rows", "q", false)) {
    return nullptr;
  }
  const Py_ssize_t C = PyList_GET_SIZE(o_chunks);
  const int64_t k = rows.size();
  const int64_t* st = start.data<int64_t>();
  if (start.size() != C + 1 || (k == 0 ? flat.buffer.len != 0 : flat.buffer.len % k != 0)) {
    PyErr_SetString(PyExc_ValueError, "move_rows: inconsistent argument sizes");
    return nullptr;
  }
  const Py_ssize_t row_bytes = k > 0 ? flat.buffer.len / k : 0;
  Chunks chunks;
  if (!chunks.get(o_chunks, "move_rows", "chunk", code, st, C, k > 0 ? row_bytes / flat.buffer.itemsize : -1, into)) {
    return nullptr;
  }
  const std::vector<char*>& base = chunks.base;
  const int64_t* r = rows.data<int64_t>();
  const int64_t first = C > 0 ? st[0] : 0, last = C > 0 ? st[C] : 0;
  for (int64_t i = 0; i < k; i++) {  // bounds once, so that the copy cannot leave its buffers
    if (r[i] < first || r[i] >= last) {
      PyErr_Format(PyExc_IndexError, "move_rows: row %lld out of range [%lld, %lld)", (long long)r[i],
                   (long long)first, (long long)last);
      return nullptr;
    }
  }
  char* f = static_cast<char*>(flat.buffer.buf);
  // Rows are anywhere in the chunks: each row's cache lines are asked for `ahead` rows before it is copied (up
  // to 8 rows, and about 16 KiB: the slots found are kept in a ring of 8).
  constexpr int64_t kRing = 8;
  const int64_t ahead =
      std::max<int64_t>(1, std::min<int64_t>(kRing - 1, (16 << 10) / std::max<Py_ssize_t>(row_bytes, 1)));
  char* ring[kRing];
  const auto slot_of = [&](int64_t i) {
    const int64_t c = chunk_of(st, C, r[i]);
    return base[c] + (r[i] - st[c]) * row_bytes;
  };
  Py_BEGIN_ALLOW_THREADS;
  for (int64_t i = 0; i < std::min(ahead, k); i++) ring[i % kRing] = slot_of(i);
  for (int64_t i = 0; i < k; i++) {
    if (i + ahead < k) {
      char* next = ring[(i + ahead) % kRing] = slot_of(i + ahead);
      for (Py_ssize_t b = 0; b < row_bytes; b += 64) {
        if (into) __builtin_prefetch(next + b, 1, 3);
        else __builtin_prefetch(next + b, 0, 3);
      }
    }
    char* slot = ring[i % kRing];
    if (into) std::memcpy(slot, f + i * row_bytes, row_bytes);
    else std::memcpy(f + i * row_bytes, slot, row_bytes);
  }
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// put_lanes(fid_chunks, mean_chunks, precision_chunks, chunk_start, rows, lanes, feature_ids, means, precision,
// kind, W, w): writes solver lanes of one exact width w straight into a store slab's rows, as
// lljax/state/store.py's slabs keep them (see move_rows): lane lanes[i] of the padded output (feature_ids and means
// (e, W), precision (e, W, W) when kind = 2, (e, W) when kind = 1, none when kind = 0) goes to row rows[i]: its
// first w ids and means, and its precision's w x w upper triangle row by row (kind 2) or first w diagonal entries
// (kind 1). What EntityStore.write_pending does with NumPy without the kernels (each field's lanes taken, then
// _Slab.put_fields), in one pass.
namespace {

template <typename T>
void put_lanes_typed(const Chunks& fid, const Chunks& mean, const Chunks* prec, const int64_t* st, int64_t C,
                     const int64_t* rows, const int64_t* lanes, int64_t m, const int64_t* fids, const T* means,
                     const T* precision, int kind, int64_t W, int64_t w) {
  const int64_t tri = w * (w + 1) / 2;
  for (int64_t i = 0; i < m; i++) {
    const int64_t c = chunk_of(st, C, rows[i]);
    const int64_t at = rows[i] - st[c], lane = lanes[i];
    std::memcpy(reinterpret_cast<int64_t*>(fid.base[c]) + at * w, fids + lane * W, w * sizeof(int64_t));
    std::memcpy(reinterpret_cast<T*>(mean.base[c]) + at * w, means + lane * W, w * sizeof(T));
    if (kind == 2) {
      T* to = reinterpret_cast<T*>(prec->base[c]) + at * tri;
      const T* from = precision + lane * W * W;
      for (int64_t a = 0; a < w; a++) {
        std::memcpy(to, from + a * W + a, (w - a) * sizeof(T));
        to += w - a;
      }
    } else if (kind == 1) {
      std::memcpy(reinterpret_cast<T*>(prec->base[c]) + at * w, precision + lane * W, w * sizeof(T));
    }
  }
}

}  // namespace

PyObject* lljax_put_lanes(PyObject*, PyObject* args) {
  PyObject *o_fid_chunks, *o_mean_chunks, *o_prec_chunks, *o_start, *o_rows, *o_lanes, *o_fids, *o_means, *o_prec;
  int kind = 0;
  long long W = 0, w = 0;
  if (!PyArg_ParseTuple(args, "OOOOOOOOOiLL", &o_fid_chunks, &o_mean_chunks, &o_prec_chunks, &o_start, &o_rows,
                        &o_lanes, &o_fids, &o_means, &o_prec, &kind, &W, &w)) {
    return nullptr;
  }
  View start, rows, lanes, fids, means, prec;
  const char code = means.get(o_means, "means", "df", false);
  if (code == 0 || !start.get(o_start, "chunk_start", "q", false) || !rows.get(o_rows, "rows", "q", false) ||
      !lanes.get(o_lanes, "lanes", "q", false) || !fids.get(o_fids, "feature_ids", "q", false)) {
    return nullptr;
  }
  if (kind < 0 || kind > 2 || W < 1 || w < 1 || w > W || (kind == 0) != (o_prec == Py_None) ||
      (kind == 0) != (o_prec_chunks == Py_None)) {
    PyErr_SetString(PyExc_ValueError, "put_lanes: inconsistent kind, widths or precision");
    return nullptr;
  }
  const char allowed[2] = {code, 0};
  if (kind != 0 && !prec.get(o_prec, "precision", allowed, false)) return nullptr;
  const int64_t e = fids.size() / W, m = rows.size();
  if (fids.size() != e * W || means.size() != e * W || lanes.size() != m ||
      (kind == 2 && prec.size() != e * W * W) || (kind == 1 && prec.size() != e * W)) {
    PyErr_SetString(PyExc_ValueError, "put_lanes: inconsistent argument sizes");
    return nullptr;
  }
  const Py_ssize_t C = start.size() - 1;
  const int64_t* st = start.data<int64_t>();
  if (C < 0) {
    PyErr_SetString(PyExc_ValueError, "put_lanes: empty chunk_start");
    return nullptr;
  }
  Chunks fid_chunks, mean_chunks, prec_chunks;
  if (!fid_chunks.get(o_fid_chunks, "put_lanes", "feature_ids", 'q', st, C, w, true) ||
      !mean_chunks.get(o_mean_chunks, "put_lanes", "means", code, st, C, w, true) ||
      (kind != 0 && !prec_chunks.get(o_prec_chunks, "put_lanes", "precision", code, st, C,
                                     kind == 2 ? w * (w + 1) / 2 : w, true))) {
    return nullptr;
  }
  const int64_t *r = rows.data<int64_t>(), *l = lanes.data<int64_t>();
  for (int64_t i = 0; i < m; i++) {  // bounds once, so that the copy cannot leave its buffers
    if (r[i] < st[0] || r[i] >= st[C]) {
      PyErr_Format(PyExc_IndexError, "put_lanes: row %lld out of range [%lld, %lld)", (long long)r[i],
                   (long long)st[0], (long long)st[C]);
      return nullptr;
    }
    if (l[i] < 0 || l[i] >= e) {
      PyErr_Format(PyExc_IndexError, "put_lanes: lane %lld out of range [0, %lld)", (long long)l[i], (long long)e);
      return nullptr;
    }
  }
  const Chunks* p = kind != 0 ? &prec_chunks : nullptr;
  Py_BEGIN_ALLOW_THREADS;
  if (code == 'd') {
    put_lanes_typed<double>(fid_chunks, mean_chunks, p, st, C, r, l, m, fids.data<int64_t>(), means.data<double>(),
                            kind != 0 ? prec.data<double>() : nullptr, kind, W, w);
  } else {
    put_lanes_typed<float>(fid_chunks, mean_chunks, p, st, C, r, l, m, fids.data<int64_t>(), means.data<float>(),
                           kind != 0 ? prec.data<float>() : nullptr, kind, W, w);
  }
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// restrict_subspaces(pair_keys, start, sizes, stride, entities, keys_out, start_out, feature_ids): a block's lanes'
// subspaces from the round's (lljax/rounds/subspaces.py: Subspaces.restrict, then feature_ids), in one pass: lane i
// is entity entities[i]; its keys i * stride + feature id go to keys_out, their offsets to start_out (E + 1), and its
// feature ids, -1 padded, to row i of feature_ids (E, D); rows past the lanes are all -1.
PyObject* lljax_restrict_subspaces(PyObject*, PyObject* args) {
  PyObject *o_keys, *o_start, *o_sizes, *o_entities, *o_keys_out, *o_start_out, *o_fids;
  long long stride = 0;
  if (!PyArg_ParseTuple(args, "OOOLOOOO", &o_keys, &o_start, &o_sizes, &stride, &o_entities, &o_keys_out,
                        &o_start_out, &o_fids)) {
    return nullptr;
  }
  View keys, start, sizes, entities, keys_out, start_out, fids;
  if (!keys.get(o_keys, "pair_keys", "q", false) || !start.get(o_start, "start", "q", false) ||
      !sizes.get(o_sizes, "sizes", "q", false) || !entities.get(o_entities, "entities", "q", false) ||
      !keys_out.get(o_keys_out, "keys_out", "q", true) || !start_out.get(o_start_out, "start_out", "q", true) ||
      !fids.get(o_fids, "feature_ids", "q", true)) {
    return nullptr;
  }
  const int64_t U = sizes.size(), e = entities.size(), E = start_out.size() - 1;
  const int64_t D = E > 0 ? fids.size() / E : 0;
  const int64_t *k = keys.data<int64_t>(), *st = start.data<int64_t>(), *sz = sizes.data<int64_t>();
  const int64_t* ent = entities.data<int64_t>();
  if (start.size() != U + 1 || E < e || fids.size() != E * D || stride < 1) {
    PyErr_SetString(PyExc_ValueError, "restrict_subspaces: inconsistent argument sizes");
    return nullptr;
  }
  int64_t total = 0;
  for (int64_t i = 0; i < e; i++) {
    if (ent[i] < 0 || ent[i] >= U) {
      PyErr_Format(PyExc_IndexError, "restrict_subspaces: entity %lld out of range [0, %lld)", (long long)ent[i],
                   (long long)U);
      return nullptr;
    }
    const int64_t n = sz[ent[i]];
    if (n > D || n < 0 || st[ent[i]] < 0 || st[ent[i]] + n > keys.size()) {
      PyErr_Format(PyExc_ValueError, "restrict_subspaces: entity %lld has %lld features, more than %lld or outside "
                   "the keys", (long long)ent[i], (long long)n, (long long)D);
      return nullptr;
    }
    total += n;
  }
  if (keys_out.size() != total) {
    PyErr_SetString(PyExc_ValueError, "restrict_subspaces: keys_out is not as long as the lanes' subspaces");
    return nullptr;
  }
  int64_t *ko = keys_out.data<int64_t>(), *so = start_out.data<int64_t>(), *fo = fids.data<int64_t>();
  Py_BEGIN_ALLOW_THREADS;
  int64_t at = 0;
  for (int64_t i = 0; i < E; i++) {
    so[i] = at;
    int64_t* row = fo + i * D;
    int64_t j = 0;
    if (i < e) {
      const int64_t u = ent[i], first = st[u], n = sz[u], base = u * stride, lane = i * stride;
      for (; j < n; j++) {
        const int64_t f = k[first + j] - base;
        row[j] = f;
        ko[at + j] = lane + f;
      }
      at += n;
    }
    for (; j < D; j++) row[j] = -1;
  }
  so[E] = at;
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// hash_lookup(table_keys, table_slots, keys, out) and hash_insert(table_keys, table_slots, keys, slots) -> int:
// lljax/state/key_index.py's IntKeyIndex, an open-addressing int64 -> int64 hash table with linear probing in two
// arrays of a power-of-two capacity (slot -1: an empty entry); a key's home entry is the top bits of
// key * 0x9E3779B97F4A7C15 (mod 2^64). hash_lookup writes each key's slot, or -1, to out. hash_insert puts each
// key -> slot in the first empty entry of its probe sequence and returns -1, or stops at the first key it finds
// already held (a key repeated in `keys` included) and returns its index: the keys before it are in; a full table is
// a ValueError (the caller keeps it at most half full). GIL released.
namespace {

// The home entry of `key` in a table of 2^(64 - shift) entries (the top bits of its multiplicative hash).
inline uint64_t hash_home(int64_t key, int shift) {
  return (static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift;
}

struct HashTable {
  View keys, slots;
  uint64_t mask = 0;
  int shift = 0;
  bool get(PyObject* o_keys, PyObject* o_slots, bool writable) {
    if (!keys.get(o_keys, "table_keys", "q", writable) || !slots.get(o_slots, "table_slots", "q", writable)) {
      return false;
    }
    const uint64_t capacity = static_cast<uint64_t>(keys.size());
    if (capacity < 2 || (capacity & (capacity - 1)) != 0 || slots.size() != keys.size()) {
      PyErr_SetString(PyExc_ValueError, "hash table: capacity is not a power of two >= 2, or the arrays differ");
      return false;
    }
    mask = capacity - 1;
    shift = 64 - __builtin_ctzll(capacity);
    return true;
  }
  // The entry that holds `key`, else the first empty entry of its probe sequence; -1 when every entry holds
  // another key (a full table).
  int64_t find(int64_t key) const {
    const int64_t *tk = keys.data<int64_t>(), *ts = slots.data<int64_t>();
    uint64_t p = hash_home(key, shift);
    for (uint64_t probes = 0; probes <= mask; probes++, p = (p + 1) & mask) {
      if (ts[p] < 0 || tk[p] == key) return static_cast<int64_t>(p);
    }
    return -1;
  }
};

}  // namespace

PyObject* lljax_hash_lookup(PyObject*, PyObject* args) {
  PyObject *o_tkeys, *o_tslots, *o_keys, *o_out;
  if (!PyArg_ParseTuple(args, "OOOO", &o_tkeys, &o_tslots, &o_keys, &o_out)) return nullptr;
  HashTable table;
  View keys, out;
  if (!table.get(o_tkeys, o_tslots, false) || !keys.get(o_keys, "keys", "q", false) ||
      !out.get(o_out, "out", "q", true)) {
    return nullptr;
  }
  if (out.size() != keys.size()) {
    PyErr_SetString(PyExc_ValueError, "hash_lookup: out and keys differ in length");
    return nullptr;
  }
  const int64_t n = keys.size();
  const int64_t *k = keys.data<int64_t>(), *ts = table.slots.data<int64_t>();
  int64_t* o = out.data<int64_t>();
  Py_BEGIN_ALLOW_THREADS;
  for (int64_t i = 0; i < n; i++) {
    const int64_t p = table.find(k[i]);
    o[i] = p >= 0 ? ts[p] : -1;  // an empty entry's slot is -1
  }
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* lljax_hash_insert(PyObject*, PyObject* args) {
  PyObject *o_tkeys, *o_tslots, *o_keys, *o_slots;
  if (!PyArg_ParseTuple(args, "OOOO", &o_tkeys, &o_tslots, &o_keys, &o_slots)) return nullptr;
  HashTable table;
  View keys, slots;
  if (!table.get(o_tkeys, o_tslots, true) || !keys.get(o_keys, "keys", "q", false) ||
      !slots.get(o_slots, "slots", "q", false)) {
    return nullptr;
  }
  const int64_t n = keys.size();
  const int64_t *k = keys.data<int64_t>(), *s = slots.data<int64_t>();
  if (slots.size() != n) {
    PyErr_SetString(PyExc_ValueError, "hash_insert: slots and keys differ in length");
    return nullptr;
  }
  for (int64_t i = 0; i < n; i++) {
    if (s[i] < 0) {
      PyErr_Format(PyExc_ValueError, "hash_insert: slot %lld is negative", (long long)s[i]);
      return nullptr;
    }
  }
  int64_t *tk = table.keys.data<int64_t>(), *ts = table.slots.data<int64_t>();
  int64_t clash = -1;
  bool full = false;
  Py_BEGIN_ALLOW_THREADS;
  for (int64_t i = 0; i < n && clash < 0 && !full; i++) {
    const int64_t p = table.find(k[i]);
    if (p < 0) {
      full = true;  // every entry held: the caller grows the table first (it keeps it at most half full)
    } else if (ts[p] >= 0) {
      clash = i;
    } else {
      tk[p] = k[i];
      ts[p] = s[i];
    }
  }
  Py_END_ALLOW_THREADS;
  if (full) {
    PyErr_SetString(PyExc_ValueError, "hash_insert: the table is full");
    return nullptr;
  }
  return PyLong_FromLongLong(clash);
}

// encode_keys(keys, codes, max_distinct) -> bytearray of int64, or None: the distinct keys of `keys` (n,) int64 in
// the order they first appear, and codes (n,) int64 gets each key's position among them: one pass through an
// open-addressing table (linear probing, the key index's multiplicative hash), doubled whenever it is half full
// (16 bytes per entry, 2 to 4 entries per distinct key, and 8 to 16 bytes per distinct key in the list), GIL
// released. None, as soon as there are more than max_distinct distinct keys: the caller sorts instead.
// lljax/data/dataset.py then sorts the distinct keys alone and renumbers the codes by their ranks, which is
// np.unique(keys, return_inverse=True) without sorting all n keys.
PyObject* lljax_encode_keys(PyObject*, PyObject* args) {
  PyObject *o_keys, *o_codes;
  long long max_distinct;
  if (!PyArg_ParseTuple(args, "OOL", &o_keys, &o_codes, &max_distinct)) return nullptr;
  View keys, codes;
  if (!keys.get(o_keys, "keys", "q", false) || !codes.get(o_codes, "codes", "q", true)) return nullptr;
  const int64_t n = keys.size();
  if (codes.size() != n) {
    PyErr_SetString(PyExc_ValueError, "encode_keys: codes and keys differ in length");
    return nullptr;
  }
  const int64_t* k = keys.data<int64_t>();
  int64_t* out = codes.data<int64_t>();
  std::vector<int64_t> distinct, table_keys, table_ids;  // table_ids[p] < 0: entry p is empty
  bool failed = false, too_many = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    uint64_t capacity = 1024;
    int shift = 64 - 10;
    table_keys.assign(capacity, 0);
    table_ids.assign(capacity, -1);
    for (int64_t i = 0; i < n; i++) {
      const int64_t key = k[i];
      uint64_t p = hash_home(key, shift);
      while (table_ids[p] >= 0 && table_keys[p] != key) p = (p + 1) & (capacity - 1);
      if (table_ids[p] < 0) {
        if (static_cast<int64_t>(distinct.size()) >= max_distinct) {
          too_many = true;
          break;
        }
        if (2 * (distinct.size() + 1) > capacity) {  // grow first: at most half full, so probes stay short
          capacity *= 2;
          shift -= 1;
          table_keys.assign(capacity, 0);
          table_ids.assign(capacity, -1);
          for (size_t id = 0; id < distinct.size(); id++) {
            uint64_t q = hash_home(distinct[id], shift);
            while (table_ids[q] >= 0) q = (q + 1) & (capacity - 1);
            table_keys[q] = distinct[id];
            table_ids[q] = static_cast<int64_t>(id);
          }
          p = hash_home(key, shift);
          while (table_ids[p] >= 0) p = (p + 1) & (capacity - 1);
        }
        table_keys[p] = key;
        table_ids[p] = static_cast<int64_t>(distinct.size());
        distinct.push_back(key);
      }
      out[i] = table_ids[p];
    }
  } catch (const std::exception&) {  // out of memory
    failed = true;
  }
  Py_END_ALLOW_THREADS;
  if (failed) return PyErr_NoMemory();
  if (too_many) Py_RETURN_NONE;
  return PyByteArray_FromStringAndSize(reinterpret_cast<const char*>(distinct.data()),
                                       static_cast<Py_ssize_t>(distinct.size() * sizeof(int64_t)));
}

// prefault(array) -> bool: asks the OS to map every whole page of the array's buffer for writing now
// (madvise MADV_POPULATE_WRITE, Linux 5.14 and later), without changing its contents, GIL released. False where
// nothing was done: the OS cannot (another system, an older kernel), or the buffer holds no whole page. Used on a
// helper thread, so that fresh memory (a store chunk's next rows) is mapped before the writes that would otherwise
// pay its page faults one by one.
PyObject* lljax_prefault(PyObject*, PyObject* arg) {
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE | PyBUF_WRITABLE) != 0) return nullptr;
  bool done = false;
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(view.buf) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(view.buf) + static_cast<uintptr_t>(view.len)) / page * page;
  // A megabyte per call: each call holds the process's memory-map lock for reading, and a thread that maps or
  // unmaps memory (a large NumPy allocation) waits for it; pieces keep that wait short.
  const uintptr_t piece = uintptr_t(1) << 20;
  if (end > begin) {
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (uintptr_t at = begin; at < end && rc == 0; at += piece) {
      rc = madvise(reinterpret_cast<void*>(at), std::min(piece, end - at), MADV_POPULATE_WRITE);
    }
    Py_END_ALLOW_THREADS;
    done = rc == 0;
  }
#endif
  PyBuffer_Release(&view);
  return PyBool_FromLong(done);
}
