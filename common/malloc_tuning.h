#pragma once
// Keeps the engine's per-step host buffers (page tables of millions of entries, rebuilt every
// step) in reused heap memory: by default glibc serves allocations above 128 KiB with fresh
// mmap()s and returns them on free(), so every step paid page faults and munmap()s for each
// large vector (a third of the host time of a 256-sequence step). Call once, early in main.
// Not thread-safe with concurrent allocation (call before starting threads).

namespace hkv {

void TuneMallocForLargeStepBuffers();

}  // namespace hkv
