#include "model/model_config.h"

#include "absl/strings/str_cat.h"

namespace hkv {

absl::Status ValidateModelConfig(const ModelConfig& c) {
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("model config (", c.name, "): ", parts...));
  };
  if (c.dim <= 0) return bad("hidden size must be > 0, got ", c.dim);
  if (c.hidden_dim <= 0) return bad("intermediate size must be > 0, got ", c.hidden_dim);
  if (c.num_layers <= 0) return bad("num_layers must be > 0, got ", c.num_layers);
  if (c.num_heads <= 0) return bad("num_heads must be > 0, got ", c.num_heads);
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return bad("num_kv_heads (", c.num_kv_heads, ") must divide num_heads (", c.num_heads, ")");
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return bad("head_dim must be even and > 0 (RoPE rotates pairs), got ", c.head_dim);
  }
  if (c.vocab_size <= 0) return bad("vocab_size must be > 0, got ", c.vocab_size);
  if (c.max_seq_len <= 0) return bad("context length must be > 0, got ", c.max_seq_len);
  if (!(c.norm_eps > 0)) return bad("rms_norm_eps must be > 0");
  if (!(c.rope_theta > 0)) return bad("rope_theta must be > 0");
  if (!c.rope_scaling.type.empty() && c.rope_scaling.type != "llama3") {
    return bad("rope_scaling type '", c.rope_scaling.type, "' is not supported (only llama3)");
  }
  return absl::OkStatus();
}

}  // namespace hkv
