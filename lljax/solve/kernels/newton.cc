// XLA FFI entry points of lljax's native CPU Newton kernel and the Python module that exposes them.
//
// Targets "lljax_newton_f64" and "lljax_newton_f32" (registered by lljax/solve/kernels/__init__.py), and
// newton_rows_start / newton_rows_wait, the same kernel started from Python on host arrays, on helper threads of its
// own and, once the caller waits, on the waiting thread (a RowsBlock: it reads the dataset's rows). Inputs,
// each with the same leading (batch) dimensions, E entities in all: X (E, N, D), y, w, offset (E, N),
// mask (E, D) int32 (a MaskCode: padding, a feature, a feature without L2), prior_mean (E, D),
// prior_precision (E, D, D) or (E, D), l2, delta, tol (E,), max_iter (E,) int32. Attributes: loss (0 linear, 1 logistic, 2 poisson), max_backtracks,
// precision_mode (0 diagonal, 1 full, 2 none). Results, finished as lljax.solve.iteration.finish: theta (E, D),
// value (E,), grad_norm (E,), precision (E, D, D) / (E, D) / (E, 1) (unused), iterations (E,), status (E,).
// The groups of entities are spread over XLA's CPU thread pool (the caller thread works too), or, for newton_rows_start,
// over the job's helper threads and the thread that waits for it.
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "newton_common.h"
#include "py_buffer.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lljax_native {
namespace {

// The AVX2 + FMA variant when the CPU has both; LLJAX_NATIVE_ISA=generic (read once) forces the baseline
// variant (tests run it too).
bool use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         !(std::getenv("LLJAX_NATIVE_ISA") && std::strcmp(std::getenv("LLJAX_NATIVE_ISA"), "generic") == 0);
  return ok;
#else
  return false;
#endif
}

struct Pool {
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int active = 0;
  bool closed = false;
};

template <typename T>
void run_groups(const Problem<T>* P, int64_t groups, Pool* pool) {
  if (pool->next.load() >= groups) return;  // nothing left to claim (a waiter after its helpers): no workspace
  const int64_t size = workspace_size(P->N, P->D, kLanes<T>);
  T* ws = static_cast<T*>(std::aligned_alloc(64, ((size * sizeof(T) + 63) / 64) * 64));
  if (ws == nullptr) return;
  const bool avx2 = use_avx2();
  // Groups are claimed kGroupClaim at a time, so that each group's solve can prefetch the next one's data.
  for (;;) {
    const int64_t g = pool->next.fetch_add(kGroupClaim);
    if (g >= groups) break;
    const int64_t g1 = std::min(g + kGroupClaim, groups);
    if (avx2) {
      avx2::solve_groups(*P, g, g1, ws);
    } else {
      generic::solve_groups(*P, g, g1, ws);
    }
  }
  std::free(ws);
}

// Runs worker(pool) on the calling thread and on up to (XLA's CPU threads - 1) helpers, capped by
// LLJAX_NATIVE_THREADS; the workers claim jobs from pool->next. Helpers that start after the caller is
// done (pool busy) find the pool closed and return without calling worker; the caller waits only for
// the helpers that did start. Returns the pool (pool->next >= jobs unless a worker ran out of memory).
template <typename Worker>
std::shared_ptr<Pool> run_parallel(ffi::ThreadPool& thread_pool, int64_t jobs, Worker worker) {
  int64_t helpers = std::min<int64_t>(thread_pool.num_threads(), jobs) - 1;
  if (const char* env = std::getenv("LLJAX_NATIVE_THREADS")) {
    const long cap = std::atol(env);
    if (cap > 0) helpers = std::min<int64_t>(helpers, cap - 1);
  }
  auto pool = std::make_shared<Pool>();
  for (int64_t h = 0; h < helpers; h++) {
    thread_pool.Schedule([pool, worker]() {
      {
        std::lock_guard<std::mutex> lock(pool->mu);
        if (pool->closed) return;
        pool->active++;
      }
      worker(pool.get());
      {
        std::lock_guard<std::mutex> lock(pool->mu);
        pool->active--;
      }
      pool->cv.notify_all();
    });
  }
  worker(pool.get());
  {
    std::unique_lock<std::mutex> lock(pool->mu);
    pool->closed = true;
    pool->cv.wait(lock, [&pool] { return pool->active == 0; });
  }
  return pool;
}

int64_t rows_of(const ffi::Span<const int64_t>& dims, size_t back) { return dims[dims.size() - back]; }

// Asks Linux for transparent huge pages (2 MB) on the aligned interior of a large result buffer, before
// the kernel first writes it. XLA serves each call a fresh buffer, and glibc maps blocks over 32 MB anew
// each time: in 4 KB pages the first touch of a 20,000-entity block's precision (42 MB, ~10,000 page
// faults) took ~13% of the call (perf, headline case). Only a hint: without THP ("never") nothing
// changes, and the buffer's contents are not affected.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < int64_t(2 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data, (void)bytes;
#endif
}

template <ffi::DataType DT>
ffi::Error Newton(ffi::ThreadPool thread_pool, ffi::Buffer<DT> X, ffi::Buffer<DT> y, ffi::Buffer<DT> w,
                  ffi::Buffer<DT> offset, ffi::Buffer<ffi::S32> mask, ffi::Buffer<DT> prior_mean,
                  ffi::Buffer<DT> prior_precision, ffi::Buffer<DT> l2, ffi::Buffer<DT> delta, ffi::Buffer<DT> tol,
                  ffi::Buffer<ffi::S32> max_iter, int32_t loss, int32_t max_backtracks, int32_t precision_mode,
                  ffi::ResultBuffer<DT> theta, ffi::ResultBuffer<DT> value, ffi::ResultBuffer<DT> grad_norm,
                  ffi::ResultBuffer<DT> precision, ffi::ResultBuffer<ffi::S32> iterations,
                  ffi::ResultBuffer<ffi::S32> status) {
  using T = ffi::NativeType<DT>;
  const auto dims = X.dimensions();
  if (dims.size() < 3) return ffi::Error::InvalidArgument("lljax_newton: X must be (..., N, D)");
  const int64_t N = rows_of(dims, 2), D = rows_of(dims, 1);
  const int64_t E = static_cast<int64_t>(tol.element_count());
  const auto count = [](const auto& buffer) { return static_cast<int64_t>(buffer.element_count()); };
  if (D < 1 || count(X) != E * N * D || count(y) != E * N || count(w) != E * N || count(offset) != E * N ||
      count(mask) != E * D || count(prior_mean) != E * D || count(l2) != E || count(delta) != E ||
      count(max_iter) != E) {
    return ffi::Error::InvalidArgument("lljax_newton: inconsistent shapes");
  }
  const int64_t p_count = count(prior_precision);
  if (p_count != E * D * D && p_count != E * D) {
    return ffi::Error::InvalidArgument("lljax_newton: prior_precision must be (E, D, D) or (E, D)");
  }
  if (loss < kLinear || loss > kPoisson) return ffi::Error::InvalidArgument("lljax_newton: unknown loss");
  Problem<T> P;
  P.E = E;
  P.N = N;
  P.D = D;
  P.X = X.typed_data();
  P.y = y.typed_data();
  P.w = w.typed_data();
  P.offset = offset.typed_data();
  P.mask = mask.typed_data();
  P.prior_mean = prior_mean.typed_data();
  P.prior_precision = prior_precision.typed_data();
  P.l2 = l2.typed_data();
  P.delta = delta.typed_data();
  P.tol = tol.typed_data();
  P.max_iter = max_iter.typed_data();
  P.full_prior = p_count == E * D * D && D > 1;
  P.loss = loss;
  P.max_backtracks = max_backtracks;
  P.precision_mode = precision_mode;
  P.theta = theta->typed_data();
  P.value = value->typed_data();
  P.grad_norm = grad_norm->typed_data();
  P.precision = precision->typed_data();
  P.iterations = iterations->typed_data();
  P.status = status->typed_data();
  if (E == 0) return ffi::Error::Success();
  advise_huge_pages(P.theta, count(*theta) * int64_t(sizeof(T)));
  advise_huge_pages(P.precision, count(*precision) * int64_t(sizeof(T)));

  const int64_t groups = (E + kLanes<T> - 1) / kLanes<T>;
  const Problem<T>* Pp = &P;
  auto pool = run_parallel(thread_pool, groups, [Pp, groups](Pool* pool) { run_groups<T>(Pp, groups, pool); });
  if (pool->next.load() < groups) return ffi::Error::Internal("lljax_newton: out of memory for the workspace");
  return ffi::Error::Success();
}


// The wide kernel (wide_kernel.h) on entities claimed kClaim at a time; per-thread workspace.
template <typename T>
void run_wide(const WideProblem<T>* P, Pool* pool) {
  const int64_t nf = wide_workspace_floats(P->N, P->K, P->D), ni = wide_workspace_ints(P->N, P->K, P->D);
  std::unique_ptr<T[]> f(new (std::nothrow) T[nf]);
  std::unique_ptr<int64_t[]> i(new (std::nothrow) int64_t[ni]);
  if (!f || !i) return;
  const bool avx2 = use_avx2();
  constexpr int64_t kClaim = 4;
  for (;;) {
    const int64_t e = pool->next.fetch_add(kClaim);
    if (e >= P->E) break;
    const int64_t e1 = std::min(e + kClaim, P->E);
    if (avx2) {
      avx2::solve_wide(*P, e, e1, f.get(), i.get());
    } else {
      generic::solve_wide(*P, e, e1, f.get(), i.get());
    }
  }
}

template <ffi::DataType DT>
ffi::Error Wide(ffi::ThreadPool thread_pool, ffi::Buffer<ffi::S32> cols, ffi::Buffer<DT> vals, ffi::Buffer<DT> y,
                ffi::Buffer<DT> w, ffi::Buffer<DT> offset, ffi::Buffer<ffi::S32> mask, ffi::Buffer<DT> prior_mean,
                ffi::Buffer<DT> prior_precision, ffi::Buffer<DT> l2, ffi::Buffer<DT> delta, ffi::Buffer<DT> tol,
                ffi::Buffer<ffi::S32> max_iter, int32_t loss, int32_t max_backtracks, int32_t precision_mode,
                ffi::ResultBuffer<DT> theta, ffi::ResultBuffer<DT> value, ffi::ResultBuffer<DT> grad_norm,
                ffi::ResultBuffer<DT> precision, ffi::ResultBuffer<ffi::S32> iterations,
                ffi::ResultBuffer<ffi::S32> status) {
  using T = ffi::NativeType<DT>;
  const auto dims = cols.dimensions();
  if (dims.size() < 3) return ffi::Error::InvalidArgument("lljax_wide: cols must be (..., N, K)");
  const int64_t N = rows_of(dims, 2), K = rows_of(dims, 1);
  const int64_t E = static_cast<int64_t>(tol.element_count());
  const int64_t D = E > 0 ? static_cast<int64_t>(mask.element_count()) / E : 0;
  const auto count = [](const auto& buffer) { return static_cast<int64_t>(buffer.element_count()); };
  if (count(cols) != E * N * K || count(vals) != E * N * K || count(y) != E * N || count(w) != E * N ||
      count(offset) != E * N || count(mask) != E * D || count(prior_mean) != E * D ||
      count(prior_precision) != E * D || count(l2) != E || count(delta) != E || count(max_iter) != E) {
    return ffi::Error::InvalidArgument("lljax_wide: inconsistent shapes");
  }
  if (loss < kLinear || loss > kPoisson) return ffi::Error::InvalidArgument("lljax_wide: unknown loss");
  if (precision_mode != kPrecisionDiagonal && precision_mode != kPrecisionNone) {
    return ffi::Error::InvalidArgument("lljax_wide: precision must be diagonal or none");
  }
  const int32_t* c = cols.typed_data();
  for (int64_t i = 0; i < E * N * K; i++) {
    if (c[i] < 0 || c[i] >= D) return ffi::Error::InvalidArgument("lljax_wide: a column is outside [0, D)");
  }
  if (E == 0) return ffi::Error::Success();
  WideProblem<T> P;
  P.E = E, P.N = N, P.K = K, P.D = D;
  P.cols = c;
  P.vals = vals.typed_data(), P.y = y.typed_data(), P.w = w.typed_data(), P.offset = offset.typed_data();
  P.mask = mask.typed_data();
  P.prior_mean = prior_mean.typed_data(), P.prior_precision = prior_precision.typed_data();
  P.l2 = l2.typed_data(), P.delta = delta.typed_data(), P.tol = tol.typed_data();
  P.max_iter = max_iter.typed_data();
  P.loss = loss, P.max_backtracks = max_backtracks, P.precision_mode = precision_mode;
  P.theta = theta->typed_data(), P.value = value->typed_data(), P.grad_norm = grad_norm->typed_data();
  P.precision = precision->typed_data(), P.iterations = iterations->typed_data(), P.status = status->typed_data();
  advise_huge_pages(P.theta, count(*theta) * int64_t(sizeof(T)));
  advise_huge_pages(P.precision, count(*precision) * int64_t(sizeof(T)));
  const WideProblem<T>* Pp = &P;
  auto pool = run_parallel(thread_pool, E, [Pp](Pool* pool) { run_wide<T>(Pp, pool); });
  if (pool->next.load() < E) return ffi::Error::Internal("lljax_wide: out of memory for the workspace");
  return ffi::Error::Success();
}

// The arguments after the design matrix, shared by both kernels: the rows, the prior, the scalars,
// the attributes and the six results.
#define LLJAX_BIND_TAIL(DT)                        \
      .Arg<ffi::Buffer<DT>>()       /* y */        \
      .Arg<ffi::Buffer<DT>>()       /* w */        \
      .Arg<ffi::Buffer<DT>>()       /* offset */   \
      .Arg<ffi::Buffer<ffi::S32>>() /* mask */     \
      .Arg<ffi::Buffer<DT>>()       /* mean */     \
      .Arg<ffi::Buffer<DT>>()       /* precision */\
      .Arg<ffi::Buffer<DT>>()       /* l2 */       \
      .Arg<ffi::Buffer<DT>>()       /* delta */    \
      .Arg<ffi::Buffer<DT>>()       /* tol */      \
      .Arg<ffi::Buffer<ffi::S32>>() /* max_iter */ \
      .Attr<int32_t>("loss")                       \
      .Attr<int32_t>("max_backtracks")             \
      .Attr<int32_t>("precision_mode")             \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<ffi::S32>>()                \
      .Ret<ffi::Buffer<ffi::S32>>()

// Newton: the dense X (E, N, D); wide: the sparse rows' columns and values (E, N, K).
#define LLJAX_BIND(DT) \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<DT>>() /* X */ LLJAX_BIND_TAIL(DT)
#define LLJAX_BIND_WIDE(DT)                                                                      \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::S32>>() /* cols */                \
      .Arg<ffi::Buffer<DT>>() /* vals */ LLJAX_BIND_TAIL(DT)

XLA_FFI_DEFINE_HANDLER_SYMBOL(WideF64, Wide<ffi::F64>, LLJAX_BIND_WIDE(ffi::F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(WideF32, Wide<ffi::F32>, LLJAX_BIND_WIDE(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NewtonF64, Newton<ffi::F64>, LLJAX_BIND(ffi::F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NewtonF32, Newton<ffi::F32>, LLJAX_BIND(ffi::F32));

// newton_rows_start's arguments that are arrays, in order.
enum RowsArg { kIndptr, kFids, kValues, kLabel, kWeight, kOffset, kOrder, kBegin, kEnd, kKeys, kStart, kSizes, kMask,
               kMean, kPrior, kL2, kDelta, kTol, kMaxIter, kTheta, kValue, kGrad, kPrecision, kIterations, kStatus,
               kRowsArrays };

// A RowsBlock solve running on its own threads, started by newton_rows_start and joined by newton_rows_wait (or,
// if nobody waits, when its capsule is freed). It holds the buffers it reads and writes (released with the GIL held,
// after the threads are joined).
struct RowsJob {
  lljax_py::View v[kRowsArrays];
  lljax_py::View repeats;  // (n,) uint8, or empty (RowSource::repeats)
  bool f64 = true;
  Problem<double> Pd;
  Problem<float> Pf;
  RowSource<double> Sd;
  RowSource<float> Sf;
  int64_t missing[2] = {-1, 0};
  int64_t bad_row = kNoBadRow;
  int64_t groups = 0;
  Pool pool;
  std::vector<std::thread> threads;
  std::mutex join_mu;  // one joiner at a time (two Python threads may wait on one job)

  template <typename T>
  Problem<T>& problem() {
    if constexpr (sizeof(T) == 8) return Pd;
    else return Pf;
  }
  template <typename T>
  RowSource<T>& source() {
    if constexpr (sizeof(T) == 8) return Sd;
    else return Sf;
  }
  // Joins the job's threads (the first call; later ones find none). Call without the GIL.
  void join() {
    std::lock_guard<std::mutex> lock(join_mu);
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
    threads.clear();
  }
};

// Checks the arguments (sizes, the lanes' ranges; the kernel checks each row it reads, so that it cannot read
// outside the buffers) and fills job's problem and row source; false with a Python error set.
template <typename T>
bool prepare_rows(RowsJob* job, int64_t stride, int64_t leading, int64_t N, int32_t loss, int32_t max_backtracks,
                  int32_t precision_mode, bool logistic_labels) {
  lljax_py::View* v = job->v;
  const int64_t E = v[kBegin].size();
  const int64_t D = E > 0 ? v[kMask].size() / E : 0;
  const int64_t n = v[kIndptr].size() - 1, nnz = v[kFids].size();
  const int64_t p_count = v[kPrior].size();
  const int64_t prec_count = precision_mode == kPrecisionFull ? E * D * D : precision_mode == kPrecisionDiagonal ? E * D : E;
  if (job->repeats.size() != 0 && job->repeats.size() != v[kOrder].size()) {
    PyErr_Format(PyExc_ValueError, "newton_rows: repeats has %lld entries, row_order %lld",
                 (long long)job->repeats.size(), (long long)v[kOrder].size());
    return false;
  }
  const bool ok = n >= 0 && v[kValues].size() == nnz && v[kLabel].size() == n && v[kWeight].size() == n &&
                  v[kOffset].size() == n && v[kEnd].size() == E && v[kStart].size() == E && v[kSizes].size() == E &&
                  v[kMask].size() == E * D && v[kMean].size() == E * D && (p_count == E * D * D || p_count == E * D) &&
                  v[kL2].size() == E && v[kDelta].size() == E && v[kTol].size() == E && v[kMaxIter].size() == E &&
                  v[kTheta].size() == E * D && v[kValue].size() == E && v[kGrad].size() == E &&
                  v[kPrecision].size() >= prec_count && v[kIterations].size() == E && v[kStatus].size() == E &&
                  stride >= 1 && leading < stride && N >= 1 && (E == 0 || D >= 1);
  if (!ok) {
    PyErr_SetString(PyExc_ValueError, "newton_rows: inconsistent argument sizes");
    return false;
  }
  if (loss < kLinear || loss > kPoisson || precision_mode < 0 || precision_mode > 2) {
    PyErr_SetString(PyExc_ValueError, "newton_rows: unknown loss or precision mode");
    return false;
  }
  const int64_t *ip = v[kIndptr].data<int64_t>(), *order = v[kOrder].data<int64_t>();
  const int64_t *begin = v[kBegin].data<int64_t>(), *end = v[kEnd].data<int64_t>();
  const int64_t *start = v[kStart].data<int64_t>(), *sizes = v[kSizes].data<int64_t>();
  for (int64_t l = 0; l < E; l++) {
    if (begin[l] < 0 || end[l] < begin[l] || end[l] > v[kOrder].size() || end[l] - begin[l] > N) {
      PyErr_Format(PyExc_IndexError, "newton_rows: rows of lane %lld out of range", (long long)l);
      return false;
    }
    if (start[l] < 0 || sizes[l] < 0 || sizes[l] > D || start[l] + sizes[l] > v[kKeys].size()) {
      PyErr_Format(PyExc_IndexError, "newton_rows: subspace of lane %lld out of range", (long long)l);
      return false;
    }
  }  // each row index and its indptr entries are checked by the kernel as it reads the row (RowSource)
  RowSource<T>& S = job->source<T>();
  S.indptr = ip;
  S.fid32 = v[kFids].buffer.itemsize == 4 ? v[kFids].data<int32_t>() : nullptr;
  S.fid64 = v[kFids].buffer.itemsize == 8 ? v[kFids].data<int64_t>() : nullptr;
  S.values = v[kValues].data<T>();
  S.label = v[kLabel].data<T>(), S.weight = v[kWeight].data<T>(), S.offset = v[kOffset].data<T>();
  S.logistic_labels = logistic_labels;
  S.row_order = order, S.lane_begin = begin, S.lane_end = end;
  S.repeats = job->repeats.size() > 0 ? job->repeats.data<uint8_t>() : nullptr;
  S.keys = v[kKeys].data<int64_t>(), S.start = start, S.sizes = sizes;
  S.stride = stride, S.leading = leading, S.n = n, S.nnz = nnz;
  S.missing = job->missing, S.bad_row = &job->bad_row;
  Problem<T>& P = job->problem<T>();
  P.E = E, P.N = N, P.D = D;
  P.X = P.y = P.w = P.offset = nullptr;
  P.rows = &S;
  P.mask = v[kMask].data<int32_t>();
  P.prior_mean = v[kMean].data<T>(), P.prior_precision = v[kPrior].data<T>();
  P.l2 = v[kL2].data<T>(), P.delta = v[kDelta].data<T>(), P.tol = v[kTol].data<T>();
  P.max_iter = v[kMaxIter].data<int32_t>();
  P.full_prior = p_count == E * D * D && D > 1;
  P.loss = loss, P.max_backtracks = max_backtracks, P.precision_mode = precision_mode;
  P.theta = v[kTheta].data<T>(), P.value = v[kValue].data<T>(), P.grad_norm = v[kGrad].data<T>();
  P.precision = v[kPrecision].data<T>();
  P.iterations = v[kIterations].data<int32_t>(), P.status = v[kStatus].data<int32_t>();
  job->groups = (E + kLanes<T> - 1) / kLanes<T>;
  return true;
}

// Starts the job's helpers: `threads` workers in all, the thread that waits for the job (newton_rows_wait) being
// one of them, so `threads - 1` helper threads, no more than there are claims of kGroupClaim groups after the
// first (a helper with nothing to claim would only allocate its workspace). With one worker, none: the waiter
// solves the whole block. While the caller goes on with host work, the helpers run beside it; once it waits, it
// claims groups too, so the cores are neither idle nor shared by more workers than `threads`.
template <typename T>
void start_rows(RowsJob* job, int64_t threads) {
  const Problem<T>* P = &job->problem<T>();
  const int64_t groups = job->groups;
  const int64_t claims = (groups + kGroupClaim - 1) / kGroupClaim;
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(threads, 1) - 1, claims - 1);
  Pool* pool = &job->pool;
  for (int64_t h = 0; h < helpers; h++) {
    try {
      job->threads.emplace_back([P, groups, pool]() { run_groups<T>(P, groups, pool); });
    } catch (...) {  // no more threads to be had: those started and the waiter do the work
      break;
    }
  }
}

// The waiter's share of the job (the groups no helper has claimed), then the helpers joined. Call without the GIL.
void work_and_join(RowsJob* job) {
  if (job->f64) {
    run_groups<double>(&job->Pd, job->groups, &job->pool);
  } else {
    run_groups<float>(&job->Pf, job->groups, &job->pool);
  }
  job->join();
}

void free_rows_job(PyObject* capsule) {
  auto* job = static_cast<RowsJob*>(PyCapsule_GetPointer(capsule, "lljax.RowsJob"));
  if (job == nullptr) return;
  Py_BEGIN_ALLOW_THREADS;  // abandoned (an exception in the caller)? its helpers may still use the buffers; the
  job->join();              // groups they have not claimed are left unsolved (nobody reads the results)
  Py_END_ALLOW_THREADS;
  delete job;  // releases the buffers, with the GIL held
}

}  // namespace
}  // namespace lljax_native

// newton_rows_start(indptr, feature_ids, values, label, weight, offset, row_order, lane_begin, lane_end, keys, start,
//                   sizes, stride, leading, N, mask, prior_mean, prior_precision, l2, delta, tol, max_iter, loss,
//                   max_backtracks, precision_mode, theta, value, grad_norm, precision, iterations, status, threads,
//                   logistic_labels, repeats)
//   -> capsule: the Newton kernel on E lanes whose data are read from the dataset's CSR rows (a RowSource,
// newton_common.h; logistic_labels: labels as given to a logistic loss, encoded as they are read; repeats: (n,)
// uint8 RowSource::repeats, or empty), for `threads`
// workers: `threads - 1` helper threads of its own start at once and run while the
// caller goes on (no GIL needed), writing the results in place; newton_rows_wait(capsule) solves the groups no helper
// has claimed on the waiting thread, joins the helpers (GIL released) and raises what went wrong.
PyObject* lljax_newton_rows_start(PyObject*, PyObject* args) {
  using namespace lljax_native;
  PyObject* o[kRowsArrays];
  PyObject* o_repeats;
  long long stride, leading, N, threads;
  int loss, max_backtracks, precision_mode, logistic_labels;
  if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOLLLOOOOOOOiiiOOOOOOLpO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                        &o[7], &o[8], &o[9], &o[10], &o[11], &stride, &leading, &N, &o[12], &o[13], &o[14], &o[15],
                        &o[16], &o[17], &o[18], &loss, &max_backtracks, &precision_mode, &o[19], &o[20], &o[21],
                        &o[22], &o[23], &o[24], &threads, &logistic_labels, &o_repeats)) {
    return nullptr;
  }
  static const char* names[kRowsArrays] = {"indptr", "feature_ids", "values", "label", "weight", "offset",
                                           "row_order", "lane_begin", "lane_end", "keys", "start", "sizes", "mask",
                                           "prior_mean", "prior_precision", "l2", "delta", "tol", "max_iter",
                                           "theta", "value", "grad_norm", "precision", "iterations", "status"};
  // Element kind of each: q int64, i int32, I int32 or int64, R the floats (prior_mean's dtype, for all of them).
  static const char kinds[] = "qIRRRRqqqqqqiRRRRRiRRRRii";
  std::unique_ptr<RowsJob> job(new (std::nothrow) RowsJob());
  if (!job) return PyErr_NoMemory();
  lljax_py::View* v = job->v;
  const char real = v[kMean].get(o[kMean], names[kMean], "df", false);
  if (real == 0) return nullptr;
  const char reals[2] = {real, 0};
  for (int i = 0; i < kRowsArrays; i++) {
    const char* allowed = kinds[i] == 'R' ? reals : kinds[i] == 'I' ? "iq" : kinds[i] == 'i' ? "i" : "q";
    if (i != kMean && !v[i].get(o[i], names[i], allowed, i >= kTheta)) return nullptr;
  }
  if (!job->repeats.get(o_repeats, "repeats", "B", false)) return nullptr;
  job->f64 = real == 'd';
  const bool ready =
      job->f64 ? prepare_rows<double>(job.get(), stride, leading, N, loss, max_backtracks, precision_mode, logistic_labels)
               : prepare_rows<float>(job.get(), stride, leading, N, loss, max_backtracks, precision_mode, logistic_labels);
  if (!ready) return nullptr;
  if (job->f64) {
    start_rows<double>(job.get(), threads);
  } else {
    start_rows<float>(job.get(), threads);
  }
  PyObject* capsule = PyCapsule_New(job.get(), "lljax.RowsJob", free_rows_job);
  if (capsule == nullptr) {  // the job's threads run on: wait for them before its buffers go
    Py_BEGIN_ALLOW_THREADS;
    job->join();
    Py_END_ALLOW_THREADS;
    return nullptr;
  }
  job.release();
  return capsule;
}

PyObject* lljax_newton_rows_wait(PyObject*, PyObject* capsule) {
  auto* job = static_cast<lljax_native::RowsJob*>(PyCapsule_GetPointer(capsule, "lljax.RowsJob"));
  if (job == nullptr) return nullptr;
  Py_BEGIN_ALLOW_THREADS;
  lljax_native::work_and_join(job);
  Py_END_ALLOW_THREADS;
  if (job->pool.next.load() < job->groups) return PyErr_NoMemory();  // no worker got its workspace
  if (job->bad_row != lljax_native::kNoBadRow) {
    PyErr_Format(PyExc_IndexError, "newton_rows: dataset row %lld (or its indptr) out of range",
                 (long long)job->bad_row);
    return nullptr;
  }
  if (job->missing[0] >= 0) {
    PyErr_Format(PyExc_ValueError, "newton_rows: feature %lld of dataset row %lld is not in its entity's subspace",
                 (long long)job->missing[1], (long long)job->missing[0]);
    return nullptr;
  }
  Py_RETURN_NONE;
}

// ------------------------------------------------------------------------------------------------
// Python module lljax.solve.kernels._newton
// ------------------------------------------------------------------------------------------------

static PyObject* registrations(PyObject*, PyObject*) {
  PyObject* out = PyDict_New();
  if (out == nullptr) return nullptr;
  const struct {
    const char* name;
    void* fn;
  } targets[] = {{"lljax_newton_f64", reinterpret_cast<void*>(lljax_native::NewtonF64)},
                 {"lljax_newton_f32", reinterpret_cast<void*>(lljax_native::NewtonF32)},
                 {"lljax_wide_f64", reinterpret_cast<void*>(lljax_native::WideF64)},
                 {"lljax_wide_f32", reinterpret_cast<void*>(lljax_native::WideF32)}};
  for (const auto& t : targets) {
    PyObject* capsule = PyCapsule_New(t.fn, nullptr, nullptr);
    if (capsule == nullptr || PyDict_SetItemString(out, t.name, capsule) != 0) {
      Py_XDECREF(capsule);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(capsule);
  }
  return out;
}

static PyObject* isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(lljax_native::use_avx2() ? "avx2+fma" : "generic");
}

static PyObject* constants(PyObject*, PyObject*) {
  using namespace lljax_native;
  return Py_BuildValue("{s:d,s:d,s:d,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "ARMIJO_C1", kArmijoC1, "STEP_SHRINK",
                       kStepShrink, "SLACK_ULPS", kSlackUlps, "RUNNING", int(kRunning), "CONVERGED",
                       int(kConverged), "MAX_ITERATIONS", int(kMaxIterations), "NON_FINITE", int(kNonFinite),
                       "STALLED", int(kStalled), "MASK_PADDING", int(kPadding), "MASK_PENALIZED",
                       int(kPenalized), "MASK_UNPENALIZED", int(kUnpenalized));
}

static PyObject* lanes(PyObject*, PyObject*) {
  return Py_BuildValue("{s:i,s:i}", "float64", lljax_native::kLanes<double>, "float32",
                       lljax_native::kLanes<float>);
}

PyObject* lljax_pack_rows(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_subspace_keys(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_block_rows(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_group_rows(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_encode_keys(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_scatter_priors(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_move_rows(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_prefault(PyObject*, PyObject* arg);  // pack.cc
PyObject* lljax_put_lanes(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_hash_lookup(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_restrict_subspaces(PyObject*, PyObject* args);  // pack.cc
PyObject* lljax_hash_insert(PyObject*, PyObject* args);  // pack.cc

static PyMethodDef methods[] = {
    {"pack_rows", lljax_pack_rows, METH_VARARGS,
     "pack_rows(indptr, feature_ids, values, rows, row_cell, row_lane, keys, start, sizes, stride, D, out, K, "
     "slot_cols, leading): each row's nonzeros (after feature `leading` of value 1 if >= 0) into its dense cell "
     "(K = 0) or its K (column, value) slots (see pack.cc)."},
    {"subspace_keys", lljax_subspace_keys, METH_VARARGS,
     "subspace_keys(indptr, feature_ids, row_order, row_start, prior_feature_ids, prior_start, stride, threads, "
     "sizes, repeats): sorted distinct entity * stride + feature id keys, as a bytearray of int64, each entity's "
     "count in sizes, and 1 in repeats (uint8, by position in row_order) for each row with its previous row's ids "
     "(see pack.cc)."},
    {"encode_keys", lljax_encode_keys, METH_VARARGS,
     "encode_keys(keys, codes, max_distinct): the distinct int64 keys in order of first appearance (a bytearray of "
     "int64; None past max_distinct of them), each key's position among them into codes (a hash table; see "
     "pack.cc)."},
    {"group_rows", lljax_group_rows, METH_VARARGS,
     "group_rows(codes, row_start, row_order): the rows grouped by entity code, stable, into row_order (a counting "
     "sort; see pack.cc)."},
    {"block_rows", lljax_block_rows, METH_VARARGS,
     "block_rows(row_order, row_start, entities, N, label, weight, offset, y, w, o, rows, lane, cell): a block's "
     "rows, lanes and cells; y, w, o filled at the cells (see pack.cc)."},
    {"scatter_priors", lljax_scatter_priors, METH_VARARGS,
     "scatter_priors(lanes, rows, feature_ids, means, precision, kind, d, keys, start, sizes, stride, D, mean_out, "
     "precision_out): stored rows of one width, rows[i] of the arrays given, into a block's prior arrays at their "
     "local columns (see pack.cc)."},
    {"move_rows", lljax_move_rows, METH_VARARGS,
     "move_rows(chunks, chunk_start, rows, flat, into_chunks): whole rows between a chunked array (a list of "
     "C-contiguous chunks, chunk c holding rows chunk_start[c] to chunk_start[c + 1] - 1) and a flat one "
     "(see pack.cc)."},
    {"put_lanes", lljax_put_lanes, METH_VARARGS,
     "put_lanes(fid_chunks, mean_chunks, precision_chunks, chunk_start, rows, lanes, feature_ids, means, precision, "
     "kind, W, w): solver lanes of exact width w into a store slab's rows, a full precision as its upper triangle "
     "(see pack.cc)."},
    {"restrict_subspaces", lljax_restrict_subspaces, METH_VARARGS,
     "restrict_subspaces(pair_keys, start, sizes, stride, entities, keys_out, start_out, feature_ids): a block's "
     "lanes' subspaces and their -1 padded feature ids from the round's subspaces, in one pass (see pack.cc)."},
    {"hash_lookup", lljax_hash_lookup, METH_VARARGS,
     "hash_lookup(table_keys, table_slots, keys, out): each int64 key's slot in an open-addressing table, or -1 "
     "(see pack.cc)."},
    {"hash_insert", lljax_hash_insert, METH_VARARGS,
     "hash_insert(table_keys, table_slots, keys, slots) -> int: keys -> slots into an open-addressing table; -1, "
     "or the index of the first key already held (see pack.cc)."},
    {"prefault", lljax_prefault, METH_O,
     "prefault(array) -> bool: maps the array's whole pages for writing now (madvise MADV_POPULATE_WRITE), contents "
     "unchanged, GIL released; False where the OS cannot (see pack.cc)."},
    {"newton_rows_start", lljax_newton_rows_start, METH_VARARGS,
     "newton_rows_start(indptr, feature_ids, values, label, weight, offset, row_order, lane_begin, lane_end, keys, "
     "start, sizes, stride, leading, N, mask, prior_mean, prior_precision, l2, delta, tol, max_iter, loss, "
     "max_backtracks, precision_mode, theta, value, grad_norm, precision, iterations, status, threads, "
     "logistic_labels) -> job: the "
     "Newton kernel started on lanes read from the dataset's rows, results in place (see newton.cc)."},
    {"newton_rows_wait", lljax_newton_rows_wait, METH_O,
     "newton_rows_wait(job): waits for a newton_rows_start job; raises what went wrong in it."},
    {"registrations", registrations, METH_NOARGS, "FFI target name -> PyCapsule of the XLA FFI handler."},
    {"isa", isa, METH_NOARGS, "The kernel variant this CPU runs: 'avx2+fma' or 'generic'."},
    {"lanes", lanes, METH_NOARGS, "Entities per SIMD group, by dtype."},
    {"constants", constants, METH_NOARGS, "The line-search constants and status codes compiled in."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_newton", "lljax's native CPU Newton kernel (XLA FFI).", -1,
                             methods};

PyMODINIT_FUNC PyInit__newton(void) { return PyModule_Create(&module); }
