#include "common/malloc_tuning.h"

#include <malloc.h>

namespace hkv {

void TuneMallocForLargeStepBuffers() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed threshold on 64-bit
  mallopt(M_TRIM_THRESHOLD, 1 << 30);   // keep freed heap memory for the next step
#endif
}

}  // namespace hkv
