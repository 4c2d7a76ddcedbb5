#pragma once
// ModelConfig and ModelWeights: a Llama-family decoder (Llama 2/3, Mistral, Qwen2, llama2.c),
// fp32 on the host. Immutable once loaded; shared read-only by every worker thread.
//
// Matrices are row-major [out_features, in_features], as in PyTorch's nn.Linear and as
// llama2.c stores them: y[o] = sum_i W[o * in + i] * x[i].

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace hkv {

// Which dimensions RoPE rotates together.
enum class RopeStyle {
  kInterleaved,  // llama2.c / Meta's original: (x[2i], x[2i+1]).
  kHalf,         // Hugging Face rotate_half: (x[i], x[i + d/2]).
};

struct RopeScaling {
  std::string type;  // "" (none) or "llama3".
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int32_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "llama2c", "LlamaForCausalLM", "MistralForCausalLM", ...
  std::string name;          // Display name (directory or file stem).
  int32_t dim = 0;           // Hidden size.
  int32_t hidden_dim = 0;    // FFN intermediate size.
  int32_t num_layers = 0;
  int32_t num_heads = 0;     // Query heads.
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t vocab_size = 0;
  int32_t max_seq_len = 0;   // Context length.
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  RopeScaling rope_scaling;
  bool tie_embeddings = false;  // lm_head shares the embedding table.
  bool qkv_bias = false;        // Qwen2.
  int32_t sliding_window = 0;   // 0 = none. Mistral's window; ignored (see README).

  int32_t q_size() const { return num_heads * head_dim; }
  int32_t kv_size() const { return num_kv_heads * head_dim; }
  int32_t group_size() const { return num_heads / num_kv_heads; }
};

// INVALID_ARGUMENT naming the field when the shape is impossible (non-positive sizes, heads
// not dividing, odd head_dim, ...).
absl::Status ValidateModelConfig(const ModelConfig& config);

struct LayerWeights {
  std::vector<float> attn_norm;  // [dim]
  std::vector<float> wq;         // [num_heads * head_dim, dim]
  std::vector<float> wk;         // [num_kv_heads * head_dim, dim]
  std::vector<float> wv;         // [num_kv_heads * head_dim, dim]
  std::vector<float> bq, bk, bv;  // Biases (qkv_bias only), else empty.
  std::vector<float> wo;         // [dim, num_heads * head_dim]
  std::vector<float> ffn_norm;   // [dim]
  std::vector<float> w_gate;     // [hidden_dim, dim]   (llama2.c w1)
  std::vector<float> w_down;     // [dim, hidden_dim]   (llama2.c w2)
  std::vector<float> w_up;       // [hidden_dim, dim]   (llama2.c w3)
};

struct ModelWeights {
  std::vector<float> embedding;   // [vocab_size, dim]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [dim]
  std::vector<float> lm_head;     // [vocab_size, dim]; empty when tie_embeddings.

  const std::vector<float>& classifier() const { return lm_head.empty() ? embedding : lm_head; }
};

struct Model {
  ModelConfig config;
  ModelWeights weights;
  // Set for random weights that the backend makes where it runs the model (the CUDA worker
  // fills them on the GPU, so an 8B benchmark never builds 30 GiB of fp32 on the host);
  // `weights` is then empty. Unset for every loaded or host-built model.
  std::optional<uint64_t> device_dummy_seed;
};

}  // namespace hkv
