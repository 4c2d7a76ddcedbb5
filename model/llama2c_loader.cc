#include "model/llama2c_loader.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

// Reads consecutive float32 tensors from a mapped file, checking bounds.
class TensorReader {
 public:
  TensorReader(const uint8_t* data, size_t size, size_t offset)
      : data_(data), size_(size), offset_(offset) {}

  absl::Status Read(const char* name, size_t count, std::vector<float>* out) {
    const size_t bytes = count * sizeof(float);
    if (offset_ + bytes > size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint is truncated: tensor '", name, "' needs ", bytes, " bytes at offset ",
          offset_, " but the file has ", size_));
    }
    out->resize(count);
    std::memcpy(out->data(), data_ + offset_, bytes);
    offset_ += bytes;
    return absl::OkStatus();
  }
  absl::Status Skip(const char* name, size_t count) {
    const size_t bytes = count * sizeof(float);
    if (offset_ + bytes > size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint is truncated inside '", name, "'"));
    }
    offset_ += bytes;
    return absl::OkStatus();
  }
  size_t offset() const { return offset_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t offset_;
};

constexpr size_t kHeader = 7 * sizeof(int32_t);

// The config that the checkpoint's header describes.
absl::StatusOr<ModelConfig> ReadHeader(const std::string& path, const MappedFile& file) {
  if (file.size() < kHeader) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is too small (", file.size(),
                                                   " bytes) for a llama2.c checkpoint header"));
  }
  int32_t h[7];
  std::memcpy(h, file.data(), kHeader);
  ModelConfig c;
  c.architecture = "llama2c";
  const size_t slash = path.rfind('/');
  c.name = path.substr(slash == std::string::npos ? 0 : slash + 1);
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.num_layers = h[2];
  c.num_heads = h[3];
  c.num_kv_heads = h[4];
  c.tie_embeddings = h[5] > 0;
  c.vocab_size = h[5] < 0 ? -h[5] : h[5];
  c.max_seq_len = h[6];
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.rope_style = RopeStyle::kInterleaved;
  // Bound every size before multiplying, so a garbage header cannot overflow the arithmetic.
  for (int32_t v : {h[0], h[1], h[2], h[3], h[4], c.vocab_size, h[6]}) {
    if (v <= 0 || v > (1 << 20)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", path, "' has an impossible llama2.c header: dim=", h[0], " hidden_dim=", h[1],
          " n_layers=", h[2], " n_heads=", h[3], " n_kv_heads=", h[4], " vocab_size=", h[5],
          " seq_len=", h[6]));
    }
  }
  if (c.dim % c.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': dim ", c.dim,
                                                   " is not divisible by n_heads ", c.num_heads));
  }
  c.head_dim = c.dim / c.num_heads;
  HKV_RETURN_IF_ERROR(ValidateModelConfig(c));
  return c;
}

// The weights after the header: whole-model arrays per tensor kind, then split by layer.
absl::StatusOr<ModelWeights> ReadWeights(const std::string& path, const MappedFile& file,
                                         const ModelConfig& c) {
  const size_t dim = c.dim, hidden = c.hidden_dim, layers = c.num_layers;
  const size_t kv_dim = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  const size_t expected_floats =
      c.vocab_size * dim + layers * (2 * dim + dim * dim * 2 + 2 * kv_dim * dim + 3 * dim * hidden) +
      dim + static_cast<size_t>(c.max_seq_len) * c.head_dim + (c.tie_embeddings ? 0 : c.vocab_size * dim);
  const size_t expected = kHeader + expected_floats * sizeof(float);
  if (file.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path, "' has ", file.size(), " bytes but its header (dim ", dim, ", ", layers,
        " layers, vocab ", c.vocab_size, ") implies ", expected,
        ": truncated or not a llama2.c checkpoint"));
  }
  TensorReader r(file.data(), file.size(), kHeader);
  ModelWeights w;
  HKV_RETURN_IF_ERROR(r.Read("token_embedding", c.vocab_size * dim, &w.embedding));
  std::vector<float> rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3;
  HKV_RETURN_IF_ERROR(r.Read("rms_att", layers * dim, &rms_att));
  HKV_RETURN_IF_ERROR(r.Read("wq", layers * dim * dim, &wq));
  HKV_RETURN_IF_ERROR(r.Read("wk", layers * kv_dim * dim, &wk));
  HKV_RETURN_IF_ERROR(r.Read("wv", layers * kv_dim * dim, &wv));
  HKV_RETURN_IF_ERROR(r.Read("wo", layers * dim * dim, &wo));
  HKV_RETURN_IF_ERROR(r.Read("rms_ffn", layers * dim, &rms_ffn));
  HKV_RETURN_IF_ERROR(r.Read("w1", layers * hidden * dim, &w1));
  HKV_RETURN_IF_ERROR(r.Read("w2", layers * dim * hidden, &w2));
  HKV_RETURN_IF_ERROR(r.Read("w3", layers * hidden * dim, &w3));
  HKV_RETURN_IF_ERROR(r.Read("rms_final", dim, &w.final_norm));
  HKV_RETURN_IF_ERROR(r.Skip("freq_cis", static_cast<size_t>(c.max_seq_len) * c.head_dim));
  if (!c.tie_embeddings) HKV_RETURN_IF_ERROR(r.Read("wcls", c.vocab_size * dim, &w.lm_head));

  auto slice = [](const std::vector<float>& all, size_t layer, size_t n) {
    return std::vector<float>(all.begin() + layer * n, all.begin() + (layer + 1) * n);
  };
  w.layers.resize(layers);
  for (size_t l = 0; l < layers; ++l) {
    LayerWeights& lw = w.layers[l];
    lw.attn_norm = slice(rms_att, l, dim);
    lw.wq = slice(wq, l, dim * dim);
    lw.wk = slice(wk, l, kv_dim * dim);
    lw.wv = slice(wv, l, kv_dim * dim);
    lw.wo = slice(wo, l, dim * dim);
    lw.ffn_norm = slice(rms_ffn, l, dim);
    lw.w_gate = slice(w1, l, hidden * dim);
    lw.w_down = slice(w2, l, dim * hidden);
    lw.w_up = slice(w3, l, hidden * dim);
  }
  return w;
}

}  // namespace

absl::StatusOr<Model> LoadLlama2cCheckpoint(const std::string& path) {
  HKV_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  Model model;
  HKV_ASSIGN_OR_RETURN(model.config, ReadHeader(path, file));
  HKV_ASSIGN_OR_RETURN(model.weights, ReadWeights(path, file, model.config));
  return model;
}

}  // namespace hkv
