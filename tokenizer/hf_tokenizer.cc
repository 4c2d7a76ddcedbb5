#include "tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/bpe_tokenizers.h"

namespace hkv {
namespace {

using nlohmann::json;

// Finds the first object (depth-first) whose "type" is `type` in a (nested) component.
const json* FindType(const json& node, const std::string& type) {
  if (node.is_object()) {
    if (node.value("type", std::string()) == type) return &node;
    for (const auto& [k, v] : node.items()) {
      if (const json* hit = FindType(v, type)) return hit;
    }
  } else if (node.is_array()) {
    for (const auto& v : node) {
      if (const json* hit = FindType(v, type)) return hit;
    }
  }
  return nullptr;
}

std::string TokenText(const json& j) {  // "<s>" or {"content": "<s>", ...}.
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object()) return j.value("content", std::string());
  return "";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Reads the vocabulary, added tokens and merges of tokenizer.json's BPE `model` into `v`.
absl::Status ReadVocabAndMerges(const json& t, const json& model, BpeVocab* v) {
  std::vector<std::pair<std::string, TokenId>> entries;
  for (const auto& [piece, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 24)) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: bad id for '", piece, "'"));
    }
    entries.emplace_back(piece, id.get<TokenId>());
  }
  std::vector<std::pair<std::string, TokenId>> added;
  std::vector<TokenId> special;
  for (const json& a : t.value("added_tokens", json::array())) {
    if (!a.contains("id") || !a["id"].is_number_integer()) continue;
    const TokenId id = a["id"].get<TokenId>();
    entries.emplace_back(a.value("content", std::string()), id);
    added.emplace_back(a.value("content", std::string()), id);
    if (a.value("special", false)) special.push_back(id);
  }
  TokenId max_id = -1;
  for (const auto& [piece, id] : entries) max_id = std::max(max_id, id);
  v->tokens.assign(max_id + 1, "");
  v->token_types.assign(max_id + 1, 1);
  for (const auto& [piece, id] : entries) v->tokens[id] = piece;
  for (TokenId id : special) v->token_types[id] = 3;
  std::sort(added.begin(), added.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  v->added = std::move(added);
  for (const json& m : model.value("merges", json::array())) {
    if (m.is_string()) {
      v->merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      v->merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError("tokenizer.json: a merge is neither \"a b\" nor [a, b]");
    }
  }
  v->ignore_merges = model.value("ignore_merges", false);
  return absl::OkStatus();
}

// Sets `v`'s BOS (when the tokenizer adds one) and EOS ids from tokenizer_config.json and
// generation_config.json (either may be empty), falling back on the tokens' texts.
absl::Status ReadBosEos(const json& t, const std::string& tokenizer_config,
                        const std::string& generation_config, BpeVocab* v) {
  json tc = json::parse(tokenizer_config.empty() ? "{}" : tokenizer_config, nullptr, false);
  json gc = json::parse(generation_config.empty() ? "{}" : generation_config, nullptr, false);
  if (tc.is_discarded() || gc.is_discarded()) {
    return absl::InvalidArgumentError("tokenizer_config.json or generation_config.json is malformed");
  }
  auto id_of = [&](const std::string& text) -> TokenId {
    for (size_t i = 0; i < v->tokens.size(); ++i) {
      if (v->tokens[i] == text) return static_cast<TokenId>(i);
    }
    return -1;
  };
  const bool add_bos = tc.value("add_bos_token", FindType(t.value("post_processor", json()),
                                                          "TemplateProcessing") != nullptr);
  if (add_bos) {
    v->bos_id = gc.contains("bos_token_id") && gc["bos_token_id"].is_number_integer()
                    ? gc["bos_token_id"].get<TokenId>()
                    : id_of(TokenText(tc.value("bos_token", json())));
  }
  if (gc.contains("eos_token_id")) {
    const json& e = gc["eos_token_id"];
    if (e.is_number_integer()) v->eos_ids.push_back(e.get<TokenId>());
    if (e.is_array()) {
      for (const json& x : e) {
        if (x.is_number_integer()) v->eos_ids.push_back(x.get<TokenId>());
      }
    }
  }
  if (v->eos_ids.empty()) {
    const TokenId eos = id_of(TokenText(tc.value("eos_token", json())));
    if (eos >= 0) v->eos_ids.push_back(eos);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(const std::string& tokenizer_json,
                                                            const std::string& tokenizer_config,
                                                            const std::string& generation_config) {
  json t = json::parse(tokenizer_json, nullptr, false);
  if (t.is_discarded() || !t.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json is not a JSON object");
  }
  const json& model = t.contains("model") ? t["model"] : json();
  if (model.value("type", std::string("BPE")) != "BPE" || !model.contains("vocab") ||
      !model["vocab"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: model type '", model.value("type", std::string("?")),
                     "' is not supported (hkv reads BPE: Llama, Mistral, Qwen2)"));
  }
  BpeVocab v;
  HKV_RETURN_IF_ERROR(ReadVocabAndMerges(t, model, &v));
  HKV_RETURN_IF_ERROR(ReadBosEos(t, tokenizer_config, generation_config, &v));
  // Which BPE family.
  const json pre = t.value("pre_tokenizer", json());
  const json norm = t.value("normalizer", json());
  if (FindType(pre, "ByteLevel") != nullptr) {
    const json* split = FindType(pre, "Split");
    if (split == nullptr || !split->contains("pattern") || !(*split)["pattern"].contains("Regex")) {
      return absl::InvalidArgumentError(
          "tokenizer.json: a byte-level pre-tokenizer without a Split regex is not supported");
    }
    v.pattern = (*split)["pattern"]["Regex"].get<std::string>();
    return MakeByteLevelBpeTokenizer(std::move(v));
  }
  const json* meta = FindType(pre, "Metaspace");
  if (meta != nullptr || model.value("byte_fallback", false) || FindType(norm, "Replace") != nullptr) {
    v.add_space_prefix =
        FindType(norm, "Prepend") != nullptr ||
        (meta != nullptr && (meta->value("prepend_scheme", std::string("always")) != "never" &&
                             meta->value("add_prefix_space", true)));
    return MakeSentencePieceBpeTokenizer(std::move(v));
  }
  return absl::InvalidArgumentError(
      "tokenizer.json: unsupported pre-tokenizer (expected ByteLevel + Split, or Metaspace)");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir) {
  const std::string tokenizer_json = ReadFile(dir + "/tokenizer.json");
  if (tokenizer_json.empty()) {
    return absl::NotFoundError(absl::StrCat("no tokenizer.json in '", dir, "'"));
  }
  return ParseHfTokenizer(tokenizer_json, ReadFile(dir + "/tokenizer_config.json"),
                          ReadFile(dir + "/generation_config.json"));
}

}  // namespace hkv
