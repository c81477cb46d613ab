// Shared declarations of lljax's native CPU Newton kernel (no ISA-specific code here).
//
// The kernel solves the same damped-Newton problem as lljax/solve/newton.py with the iteration of lljax/solve/iteration.py, entity by
// entity, with kLanes<T> entities in the SIMD lanes of a "group" (entity axis last inside a group,
// transposed from the (E, N, D) block on load): per Newton step the curvature, the Hessian
// X^T diag(c) X + A, its L D L^T factorization, the direction, the Armijo line search and the gradient are
// computed for the whole group in cache, and only the results are written back.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#ifndef LLJAX_NO_MVEC
// Vector variants from glibc's libmvec (_ZGV*_exp ...), so the row loops vectorize without -ffast-math
// (which would also assume finite math and break the NON_FINITE semantics).
extern "C" {
__attribute__((simd("notinbranch"), nothrow, const)) double exp(double);
__attribute__((simd("notinbranch"), nothrow, const)) double log(double);
__attribute__((simd("notinbranch"), nothrow, const)) float expf(float);
__attribute__((simd("notinbranch"), nothrow, const)) float logf(float);
}
#endif

namespace lljax_native {

// Subspaces of up to this many keys are searched by counting (subspace_column).
constexpr int64_t kCountedSearch = 64;

// The column of `key` in a lane's sorted subspace keys[lo, lo + size), -1 if absent (the kernel's row loader, and
// the host helpers that place rows and priors). Found by a merge walk first: `walk`, the column after the previous
// match, so that keys looked up in increasing order (the usual layout of a row or a stored prior) are each found a
// few steps on; else searched, whatever the order: in a subspace of up to kCountedSearch keys by counting the keys
// below it (no branch to mispredict), in a larger one by binary search.
inline int64_t subspace_column(const int64_t* keys, int64_t lo, int64_t size, int64_t key, int64_t& walk) {
  while (walk < size && keys[lo + walk] < key) walk++;
  if (walk < size && keys[lo + walk] == key) return walk++;
  int64_t at = 0;
  if (size <= kCountedSearch) {
    for (int64_t c = 0; c < size; c++) at += keys[lo + c] < key;
  } else {
    at = std::lower_bound(keys + lo, keys + lo + size, key) - (keys + lo);
  }
  return at < size && keys[lo + at] == key ? at : -1;
}

enum Loss : int32_t { kLinear = 0, kLogistic = 1, kPoisson = 2 };
enum PrecisionMode : int32_t { kPrecisionDiagonal = 0, kPrecisionFull = 1, kPrecisionNone = 2 };
enum StatusCode : int32_t { kRunning = -1, kConverged = 0, kMaxIterations = 1, kNonFinite = 2, kStalled = 3 };

// The line search of every method (lljax/solve/base.py: ARMIJO_C1, STEP_SHRINK, SLACK_ULPS; checked by
// tests/test_solve_contract.py through the module's constants()): Armijo's sufficient decrease
// f(t) <= f(0) + kArmijoC1 t slope + slack from t = 1, t *= kStepShrink per backtrack, and
// slack = kSlackUlps eps (1 + |f(0)|).
constexpr double kArmijoC1 = 1e-4;
constexpr double kStepShrink = 0.5;
constexpr double kSlackUlps = 16;

// The feature mask (lljax/solve/kernels/__init__.py: MASK_*): padding, a real feature, a real feature
// without the L2 term (the unpenalized intercept).
enum MaskCode : int32_t { kPadding = 0, kPenalized = 1, kUnpenalized = 2 };

template <typename T>
constexpr int kLanes = 32 / sizeof(T);  // one 256-bit vector per lane-op (4 doubles, 8 floats)

// The "rows" source of a block's data: each lane's examples read from the dataset's CSR rows as the kernel
// loads the lane's group (lljax.solve.blocks.RowsBlock), instead of from a padded (E, N, D) X. Lane l has the
// dataset rows row_order[lane_begin[l] : lane_end[l]] (at most N; none for a padding lane); a row's entries are
// feature `leading` of value 1 first (when leading >= 0, the dataset's implicit intercept), then its stored
// nonzeros indptr[r] .. indptr[r + 1]. An entry's local column is its position in the lane's sorted subspace
// keys (lane * stride + feature id, keys[start[l] : start[l] + sizes[l]]): its rank in the row when the key is
// there (checked), else found by subspace_column (below). Repeated (row, feature) entries add up in double and are
// rounded once, as lljax.solve.kernels.pack_rows does, so the loaded X equals the packed one bit for bit. Each
// row index and its indptr entries are checked as the row is read (a bad one ends its lane's load and is
// reported), so the caller checks only the lanes' ranges.
template <typename T>
struct RowSource {
  const int64_t* indptr;                                  // (n + 1,)
  const int32_t* fid32;                                   // (nnz,) feature ids, one of fid32 / fid64
  const int64_t* fid64;
  const T* values;                                        // (nnz,)
  const T *label, *weight, *offset;                       // (n,) each
  bool logistic_labels;  // the labels as given to a logistic loss: read as 1 -> +1, anything else -> -1
  const int64_t *row_order, *lane_begin, *lane_end;       // (n,), (E,), (E,)
  // (n,) by position in row_order, or null: 1 where the row lists the same feature ids, byte for byte, as the row
  // before it in row_order (of the same entity), so that a lane's row loader can reuse that row's columns (trusted
  // for the values, not for bounds: the row's length is still checked).
  const uint8_t* repeats;
  const int64_t *keys, *start, *sizes;                    // the lanes' subspaces: (P,), (E,), (E,)
  int64_t stride, leading;
  int64_t n, nnz;    // rows and nonzeros of the dataset: a row index or an indptr entry outside them ends the lane
  int64_t* missing;  // (2,): the first (dataset row, feature) outside its lane's subspace; row -1 if none
  int64_t* bad_row;  // (1,): a row_order entry out of range, or a row whose indptr is; kNoBadRow if none
};

constexpr int64_t kNoBadRow = INT64_MIN;  // RowSource::bad_row before any (a bad row index may be negative)
constexpr int64_t kGroupClaim = 8;         // groups a kernel thread claims at a time (newton.cc: run_groups)

template <typename T>
struct Problem {
  int64_t E, N, D;
  const T *X, *y, *w, *offset;           // (E, N, D), (E, N) x 3; unused with rows
  const RowSource<T>* rows = nullptr;    // the rows source instead of X, y, w, offset, or null
  const int32_t* mask;                   // (E, D): a MaskCode per feature
  const T *prior_mean, *prior_precision;  // (E, D); (E, D, D) if full_prior else (E, D)
  const T *l2, *delta, *tol;             // (E,) each
  const int32_t* max_iter;               // (E,)
  bool full_prior;
  int32_t loss, max_backtracks, precision_mode;
  // Results, finished as lljax.solve.iteration.finish: theta (E, D); precision (E, D, D) full, (E, D) diagonal,
  // unused for none; value, grad_norm, iterations, status (E,).
  T *theta, *value, *grad_norm, *precision;
  int32_t *iterations, *status;
};

// The wide kernel's problem (lljax/solve/span.py): E entities of N sparse rows, each of K (column, value)
// slots, D local features, a diagonal prior.
template <typename T>
struct WideProblem {
  int64_t E, N, K, D;
  const int32_t* cols;                   // (E, N, K) local columns in [0, D)
  const T *vals, *y, *w, *offset;        // (E, N, K), (E, N) x 3
  const int32_t* mask;                   // (E, D): a MaskCode per feature
  const T *prior_mean, *prior_precision;  // (E, D) each
  const T *l2, *delta, *tol;             // (E,) each
  const int32_t* max_iter;               // (E,)
  int32_t loss, max_backtracks, precision_mode;  // precision_mode: kPrecisionDiagonal or kPrecisionNone
  T *theta, *value, *grad_norm, *precision;      // (E, D), (E,), (E,), (E, D) (diagonal) or unused
  int32_t *iterations, *status;
};

// Workspace of the wide kernel per thread (one entity at a time): elements of T, and int64 indices.
inline int64_t wide_workspace_floats(int64_t N, int64_t K, int64_t D) { return 2 * N * K + 2 * N * N + 15 * N + 9 * D; }
inline int64_t wide_workspace_ints(int64_t N, int64_t K, int64_t D) { return D + 1 + N * K; }

// Elements of T the kernel needs as workspace per thread (one group at a time).
inline int64_t workspace_size(int64_t N, int64_t D, int lanes) {
  const int64_t Dp = (D + 3) / 4 * 4;
  return (2 * N * Dp + 12 * N + Dp * Dp + 3 * D * D + 16 * D + 72) * lanes + 1024 + 5 * Dp + 64;  // + rows scratch
}

#define LLJAX_DECLARE_ISA(ns)                                                                          \
  namespace ns {                                                                                       \
  void solve_groups(const Problem<double>& p, int64_t g0, int64_t g1, double* workspace);              \
  void solve_groups(const Problem<float>& p, int64_t g0, int64_t g1, float* workspace);                \
  void solve_wide(const WideProblem<double>& p, int64_t e0, int64_t e1, double* f, int64_t* i);        \
  void solve_wide(const WideProblem<float>& p, int64_t e0, int64_t e1, float* f, int64_t* i);          \
  }
LLJAX_DECLARE_ISA(avx2)
LLJAX_DECLARE_ISA(generic)

}  // namespace lljax_native
