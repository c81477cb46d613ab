// The Newton kernel compiled for the baseline ISA of the build (any CPU the extension runs on).
#include "newton_common.h"

namespace lljax_native {
namespace generic {
#include "newton_kernel.h"
#include "wide_kernel.h"
}  // namespace generic
}  // namespace lljax_native
