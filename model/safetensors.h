#pragma once
// Safetensors checkpoints, memory-mapped: one `model.safetensors` file or shards listed by
// `model.safetensors.index.json`. Tensors convert to fp32 from F32 / F16 / BF16.
// Immutable once opened; thread-safe for reads.
//
//   file: u64 header_len | JSON header {"name": {"dtype", "shape", "data_offsets": [b, e]}, ...}
//         | tensor bytes (offsets relative to the end of the header)

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"

namespace hkv {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  std::string file;  // Which shard holds it (for errors).
};

class SafetensorsCheckpoint {
 public:
  // Opens `dir`/model.safetensors, or the shards named by `dir`/model.safetensors.index.json.
  // NOT_FOUND when neither exists; INVALID_ARGUMENT (naming file and tensor) for a corrupt
  // header, offsets outside the file, an index naming a missing shard, or a duplicate tensor.
  static absl::StatusOr<SafetensorsCheckpoint> Open(const std::string& dir);

  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
  // The tensor `name` as fp32, checked against `shape`. NOT_FOUND names a missing tensor;
  // INVALID_ARGUMENT gives expected vs found shapes, or an unsupported dtype.
  absl::StatusOr<std::vector<float>> ReadF32(const std::string& name,
                                             const std::vector<int64_t>& shape) const;

 private:
  absl::Status AddFile(const std::string& path);

  std::vector<std::shared_ptr<MappedFile>> files_;
  std::map<std::string, SafetensorsTensor> tensors_;
};

}  // namespace hkv
