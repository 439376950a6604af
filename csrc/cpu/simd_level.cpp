// The name of the SIMD level this copy of the CPU kernels was compiled for, derived from the
// compiler's target macros (not from the build's level list) so it cannot disagree with them.
#include "cpu/dispatch.h"
#include "cpu/simd.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)

const char* simd_level() { return simd::kLevelName; }

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
