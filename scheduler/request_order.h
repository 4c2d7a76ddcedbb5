#pragma once
// The order the scheduler serves requests in: running ones when it plans a step, waiting ones
// when it queues them. Stateless.

#include "scheduler/request.h"

namespace hkv {

// Returns whether `a` is served before `b`: higher priority first, then older (earlier Add).
inline bool MoreImportant(const Request* a, const Request* b) {
  return a->priority != b->priority ? a->priority > b->priority
                                    : a->arrival_order < b->arrival_order;
}

}  // namespace hkv
