// The Newton kernel compiled for AVX2 + FMA (x86-64); used when the CPU has both (checked at run time).
#include "newton_common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define LLJAX_REGISTER_BARRIER 1  // the kernel may pin vectors in (AVX) registers: see LLJAX_IN_REGISTER
// Feature counts with a variant of their own (Features in newton_kernel.h): padded counts of
// lljax.rounds.plan.padded_features below the wide kernel's threshold.
#define LLJAX_FIXED_FEATURES , 8, 12, 16, 24, 32
// With a constant D, GCC warns about the remainder loops over features that cannot run (their counters
// could only overflow after ~2^60 iterations): no code depends on it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
namespace lljax_native {
namespace avx2 {
#include "newton_kernel.h"
#include "wide_kernel.h"
}  // namespace avx2
}  // namespace lljax_native
#pragma GCC diagnostic pop
#pragma GCC pop_options
#define LLJAX_HAVE_AVX2_BUILD 1
#else
namespace lljax_native {
namespace avx2 {  // never dispatched to on other architectures
void solve_groups(const Problem<double>&, int64_t, int64_t, double*) {}
void solve_groups(const Problem<float>&, int64_t, int64_t, float*) {}
void solve_wide(const WideProblem<double>&, int64_t, int64_t, double*, int64_t*) {}
void solve_wide(const WideProblem<float>&, int64_t, int64_t, float*, int64_t*) {}
}  // namespace avx2
}  // namespace lljax_native
#endif
