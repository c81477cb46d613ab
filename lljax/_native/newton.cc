// XLA FFI entry points of lljax's native CPU Newton kernel and the Python module that exposes them.
//
// Targets "lljax_newton_f64" and "lljax_newton_f32" (registered by lljax/_native/__init__.py). Inputs,
// each with the same leading (batch) dimensions, E entities in all: X (E, N, D), y, w, offset (E, N),
// A (E, D, D) or (E, D) (the penalty matrix delta P0 + (1 - delta) l2 I, identity on padding features),
// b (E, D), c (E,), theta0 (E, D), tol (E,), max_iter (E,) int32. Attributes: loss (0 linear, 1 logistic,
// 2 poisson), max_backtracks, precision_mode (0 diagonal, 1 full, 2 none). Results: theta (E, D),
// value (E,), grad_norm (E,), precision (E, D, D) / (E, D) / (E, 1) (unused), iterations (E,), status (E,).
// The groups of entities are spread over XLA's CPU thread pool; the caller thread works too.
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "newton_common.h"
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
  const int64_t size = workspace_size(P->N, P->D, kLanes<T>);
  T* ws = static_cast<T*>(std::aligned_alloc(64, ((size * sizeof(T) + 63) / 64) * 64));
  if (ws == nullptr) return;
  const bool avx2 = use_avx2();
  for (;;) {
    const int64_t g = pool->next.fetch_add(1);
    if (g >= groups) break;
    if (avx2) {
      avx2::solve_groups(*P, g, g + 1, ws);
    } else {
      generic::solve_groups(*P, g, g + 1, ws);
    }
  }
  std::free(ws);
}

int64_t rows_of(const ffi::Span<const int64_t>& dims, size_t back) { return dims[dims.size() - back]; }

template <ffi::DataType DT>
ffi::Error Newton(ffi::ThreadPool thread_pool, ffi::Buffer<DT> X, ffi::Buffer<DT> y, ffi::Buffer<DT> w,
                  ffi::Buffer<DT> offset, ffi::Buffer<DT> A, ffi::Buffer<DT> b, ffi::Buffer<DT> c,
                  ffi::Buffer<DT> theta0, ffi::Buffer<DT> tol, ffi::Buffer<ffi::S32> max_iter, int32_t loss,
                  int32_t max_backtracks, int32_t precision_mode, ffi::ResultBuffer<DT> theta,
                  ffi::ResultBuffer<DT> value, ffi::ResultBuffer<DT> grad_norm, ffi::ResultBuffer<DT> precision,
                  ffi::ResultBuffer<ffi::S32> iterations, ffi::ResultBuffer<ffi::S32> status) {
  using T = ffi::NativeType<DT>;
  const auto dims = X.dimensions();
  if (dims.size() < 3) return ffi::Error::InvalidArgument("lljax_newton: X must be (..., N, D)");
  const int64_t N = rows_of(dims, 2), D = rows_of(dims, 1);
  const int64_t E = static_cast<int64_t>(c.element_count());
  if (D < 1 || static_cast<int64_t>(X.element_count()) != E * N * D ||
      static_cast<int64_t>(y.element_count()) != E * N || static_cast<int64_t>(theta0.element_count()) != E * D ||
      static_cast<int64_t>(tol.element_count()) != E || static_cast<int64_t>(max_iter.element_count()) != E) {
    return ffi::Error::InvalidArgument("lljax_newton: inconsistent shapes");
  }
  const int64_t a_count = static_cast<int64_t>(A.element_count());
  if (a_count != E * D * D && a_count != E * D) {
    return ffi::Error::InvalidArgument("lljax_newton: A must be (E, D, D) or (E, D)");
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
  P.A = A.typed_data();
  P.b = b.typed_data();
  P.c = c.typed_data();
  P.theta0 = theta0.typed_data();
  P.tol = tol.typed_data();
  P.max_iter = max_iter.typed_data();
  P.full_A = a_count == E * D * D && D > 1;
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

  const int64_t groups = (E + kLanes<T> - 1) / kLanes<T>;
  int64_t helpers = std::min<int64_t>(thread_pool.num_threads(), groups) - 1;
  if (const char* env = std::getenv("LLJAX_NATIVE_THREADS")) {
    const long cap = std::atol(env);
    if (cap > 0) helpers = std::min<int64_t>(helpers, cap - 1);
  }
  // Helpers that start after the caller is done (pool busy) find the pool closed and return without
  // touching P; the caller waits only for the helpers that did start.
  auto pool = std::make_shared<Pool>();
  for (int64_t h = 0; h < helpers; h++) {
    const Problem<T>* Pp = &P;
    thread_pool.Schedule([pool, Pp, groups]() {
      {
        std::lock_guard<std::mutex> lock(pool->mu);
        if (pool->closed) return;
        pool->active++;
      }
      run_groups<T>(Pp, groups, pool.get());
      {
        std::lock_guard<std::mutex> lock(pool->mu);
        pool->active--;
      }
      pool->cv.notify_all();
    });
  }
  run_groups<T>(&P, groups, pool.get());
  {
    std::unique_lock<std::mutex> lock(pool->mu);
    pool->closed = true;
    pool->cv.wait(lock, [&pool] { return pool->active == 0; });
  }
  if (pool->next.load() < groups) return ffi::Error::Internal("lljax_newton: out of memory for the workspace");
  return ffi::Error::Success();
}

#define LLJAX_BIND(DT)                             \
  ffi::Ffi::Bind()                                 \
      .Ctx<ffi::ThreadPool>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<DT>>()                      \
      .Arg<ffi::Buffer<ffi::S32>>()                \
      .Attr<int32_t>("loss")                       \
      .Attr<int32_t>("max_backtracks")             \
      .Attr<int32_t>("precision_mode")             \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<DT>>()                      \
      .Ret<ffi::Buffer<ffi::S32>>()                \
      .Ret<ffi::Buffer<ffi::S32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(NewtonF64, Newton<ffi::F64>, LLJAX_BIND(ffi::F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NewtonF32, Newton<ffi::F32>, LLJAX_BIND(ffi::F32));

}  // namespace
}  // namespace lljax_native

// ------------------------------------------------------------------------------------------------
// Python module lljax._native._newton
// ------------------------------------------------------------------------------------------------

static PyObject* registrations(PyObject*, PyObject*) {
  PyObject* out = PyDict_New();
  if (out == nullptr) return nullptr;
  const struct {
    const char* name;
    void* fn;
  } targets[] = {{"lljax_newton_f64", reinterpret_cast<void*>(lljax_native::NewtonF64)},
                 {"lljax_newton_f32", reinterpret_cast<void*>(lljax_native::NewtonF32)}};
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

static PyObject* lanes(PyObject*, PyObject*) {
  return Py_BuildValue("{s:i,s:i}", "float64", lljax_native::kLanes<double>, "float32",
                       lljax_native::kLanes<float>);
}

static PyMethodDef methods[] = {
    {"registrations", registrations, METH_NOARGS, "FFI target name -> PyCapsule of the XLA FFI handler."},
    {"isa", isa, METH_NOARGS, "The kernel variant this CPU runs: 'avx2+fma' or 'generic'."},
    {"lanes", lanes, METH_NOARGS, "Entities per SIMD group, by dtype."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_newton", "lljax's native CPU Newton kernel (XLA FFI).", -1,
                             methods};

PyMODINIT_FUNC PyInit__newton(void) { return PyModule_Create(&module); }
