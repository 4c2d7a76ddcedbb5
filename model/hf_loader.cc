#include "model/hf_loader.h"

#include <sys/stat.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/hf_config.h"
#include "model/llama2c_loader.h"
#include "model/safetensors.h"

namespace hkv {
namespace {

// Collects every problem so one error lists all missing tensors.
class Reader {
 public:
  explicit Reader(const SafetensorsCheckpoint& ckpt) : ckpt_(ckpt) {}
  void Read(const std::string& name, std::vector<int64_t> shape, std::vector<float>* out) {
    used_.insert(name);
    auto t = ckpt_.ReadF32(name, shape);
    if (t.ok()) {
      *out = std::move(*t);
    } else if (t.status().code() == absl::StatusCode::kNotFound) {
      missing_.push_back(name);
    } else if (first_error_.ok()) {
      first_error_ = t.status();
    }
  }
  absl::Status Finish(const std::string& dir) const {
    if (!missing_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint '", dir, "' lacks ",
                                                     missing_.size(), " tensors: ",
                                                     absl::StrJoin(missing_, ", ")));
    }
    HKV_RETURN_IF_ERROR(first_error_);
    std::vector<std::string> extra;
    for (const auto& [name, t] : ckpt_.tensors()) {
      // Non-persistent buffers some exporters keep.
      if (used_.count(name) == 0 && name.find("rotary_emb.inv_freq") == std::string::npos) {
        extra.push_back(name);
      }
    }
    if (!extra.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint '", dir, "' has ", extra.size(),
                                                     " unexpected tensors: ",
                                                     absl::StrJoin(extra, ", ")));
    }
    return absl::OkStatus();
  }

 private:
  const SafetensorsCheckpoint& ckpt_;
  std::set<std::string> used_;
  std::vector<std::string> missing_;
  absl::Status first_error_;
};

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

absl::StatusOr<Model> LoadHfModel(const std::string& dir) {
  Model model;
  HKV_ASSIGN_OR_RETURN(model.config, LoadHfConfig(dir));
  HKV_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(dir));
  const ModelConfig& c = model.config;
  const int64_t dim = c.dim, q = c.q_size(), kv = c.kv_size(), hidden = c.hidden_dim;
  ModelWeights& w = model.weights;
  Reader r(ckpt);
  r.Read("model.embed_tokens.weight", {c.vocab_size, dim}, &w.embedding);
  w.layers.resize(c.num_layers);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights& lw = w.layers[l];
    r.Read(p + "input_layernorm.weight", {dim}, &lw.attn_norm);
    r.Read(p + "self_attn.q_proj.weight", {q, dim}, &lw.wq);
    r.Read(p + "self_attn.k_proj.weight", {kv, dim}, &lw.wk);
    r.Read(p + "self_attn.v_proj.weight", {kv, dim}, &lw.wv);
    if (c.qkv_bias) {
      r.Read(p + "self_attn.q_proj.bias", {q}, &lw.bq);
      r.Read(p + "self_attn.k_proj.bias", {kv}, &lw.bk);
      r.Read(p + "self_attn.v_proj.bias", {kv}, &lw.bv);
    }
    r.Read(p + "self_attn.o_proj.weight", {dim, q}, &lw.wo);
    r.Read(p + "post_attention_layernorm.weight", {dim}, &lw.ffn_norm);
    r.Read(p + "mlp.gate_proj.weight", {hidden, dim}, &lw.w_gate);
    r.Read(p + "mlp.up_proj.weight", {hidden, dim}, &lw.w_up);
    r.Read(p + "mlp.down_proj.weight", {dim, hidden}, &lw.w_down);
  }
  r.Read("model.norm.weight", {dim}, &w.final_norm);
  if (!c.tie_embeddings) r.Read("lm_head.weight", {c.vocab_size, dim}, &w.lm_head);
  HKV_RETURN_IF_ERROR(r.Finish(dir));
  return model;
}

absl::StatusOr<Model> LoadModel(const std::string& path) {
  if (IsDirectory(path)) return LoadHfModel(path);
  return LoadLlama2cCheckpoint(path);
}

}  // namespace hkv
