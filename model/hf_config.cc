#include "model/hf_config.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using nlohmann::json;

// Reads an integer field; `fallback` < 0 means required.
absl::StatusOr<int32_t> Int(const json& j, const char* key, const std::string& src,
                            int64_t fallback = -1) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback >= 0) return static_cast<int32_t>(fallback);
    return absl::InvalidArgumentError(absl::StrCat(src, ": missing \"", key, "\""));
  }
  if (!it->is_number_integer() || it->get<int64_t>() <= 0 || it->get<int64_t>() > (1LL << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": \"", key, "\" must be a positive integer, got ", it->dump()));
  }
  return static_cast<int32_t>(it->get<int64_t>());
}

absl::StatusOr<float> Float(const json& j, const char* key, const std::string& src,
                            float fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": \"", key, "\" must be a number, got ", it->dump()));
  }
  return it->get<float>();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& text, const std::string& src) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(src, " is not a JSON object"));
  }
  ModelConfig c;
  auto arch = j.find("architectures");
  if (arch == j.end() || !arch->is_array() || arch->empty() || !(*arch)[0].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": missing \"architectures\""));
  }
  c.architecture = (*arch)[0].get<std::string>();
  if (c.architecture != "LlamaForCausalLM" && c.architecture != "MistralForCausalLM" &&
      c.architecture != "Qwen2ForCausalLM") {
    return absl::InvalidArgumentError(absl::StrCat(
        src, ": architecture ", c.architecture,
        " is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"));
  }
  HKV_ASSIGN_OR_RETURN(c.dim, Int(j, "hidden_size", src));
  HKV_ASSIGN_OR_RETURN(c.hidden_dim, Int(j, "intermediate_size", src));
  HKV_ASSIGN_OR_RETURN(c.num_layers, Int(j, "num_hidden_layers", src));
  HKV_ASSIGN_OR_RETURN(c.num_heads, Int(j, "num_attention_heads", src));
  HKV_ASSIGN_OR_RETURN(c.num_kv_heads, Int(j, "num_key_value_heads", src, c.num_heads));
  HKV_ASSIGN_OR_RETURN(c.head_dim, Int(j, "head_dim", src, c.dim / c.num_heads));
  HKV_ASSIGN_OR_RETURN(c.vocab_size, Int(j, "vocab_size", src));
  HKV_ASSIGN_OR_RETURN(c.max_seq_len, Int(j, "max_position_embeddings", src));
  HKV_ASSIGN_OR_RETURN(c.norm_eps, Float(j, "rms_norm_eps", src, 1e-6f));
  HKV_ASSIGN_OR_RETURN(c.rope_theta, Float(j, "rope_theta", src, 10000.0f));
  // transformers >= 5 writes rope settings as "rope_parameters" (theta and scaling together).
  const json* rope = nullptr;
  if (auto rp = j.find("rope_parameters"); rp != j.end() && rp->is_object()) {
    rope = &*rp;
    HKV_ASSIGN_OR_RETURN(c.rope_theta, Float(*rp, "rope_theta", src, c.rope_theta));
  } else if (auto rs = j.find("rope_scaling"); rs != j.end() && rs->is_object()) {
    rope = &*rs;
  }
  c.rope_style = RopeStyle::kHalf;
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  c.qkv_bias = c.architecture == "Qwen2ForCausalLM";
  if (auto sw = j.find("sliding_window"); sw != j.end() && sw->is_number_integer()) {
    c.sliding_window = sw->get<int32_t>();
  }
  if (rope != nullptr) {
    const json& rs = *rope;
    std::string type = rs.value("rope_type", rs.value("type", std::string()));
    if (type == "default") type.clear();
    c.rope_scaling.type = type;
    if (!type.empty() && type != "llama3") {
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": rope scaling type '", type, "' is not supported (llama3)"));
    }
    HKV_ASSIGN_OR_RETURN(c.rope_scaling.factor, Float(rs, "factor", src, 1.0f));
    HKV_ASSIGN_OR_RETURN(c.rope_scaling.low_freq_factor, Float(rs, "low_freq_factor", src, 1.0f));
    HKV_ASSIGN_OR_RETURN(c.rope_scaling.high_freq_factor,
                         Float(rs, "high_freq_factor", src, 4.0f));
    HKV_ASSIGN_OR_RETURN(c.rope_scaling.original_max_position_embeddings,
                         Int(rs, "original_max_position_embeddings", src, 8192));
  }
  const size_t slash = src.rfind('/', src.size() > 12 ? src.size() - 13 : 0);
  c.name = src;
  if (src.size() > 12 && src.compare(src.size() - 12, 12, "/config.json") == 0) {
    c.name = src.substr(slash == std::string::npos ? 0 : slash + 1,
                        src.size() - 12 - (slash == std::string::npos ? 0 : slash + 1));
  }
  HKV_RETURN_IF_ERROR(ValidateModelConfig(c));
  return c;
}

absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path) {
  struct stat st;
  std::string file = path;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) file = path + "/config.json";
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", file, "'"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseHfConfig(text.str(), file);
}

}  // namespace hkv
