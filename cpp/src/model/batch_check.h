// Validation of a ForwardBatch against the KV cache it will read and write. The kernels trust
// their indices, so a malformed batch must be refused here, before any memory is touched.
#pragma once
#include <cstdint>
#include <vector>

#include "medrt/kv_cache.h"
#include "medrt/model.h"

namespace medrt::model {

// Throws InvalidRequest when the batch's arrays disagree in length, a row names a sequence or
// slot outside the cache, a row's block table does not cover its position, or a logit row is
// out of range; throws InvalidRequest when the cache was built for another model geometry.
// `last_pos` is the caller's scratch (kept across steps so that checking allocates nothing).
void check_batch(const ForwardBatch& batch, KVCache& kv, const ModelConfig& config,
                 std::vector<int64_t>& last_pos);

}  // namespace medrt::model
