#include "model/generation_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace hkv {

absl::StatusOr<SamplingDefaults> ParseSamplingDefaults(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("generation_config.json is not a JSON object");
  }
  SamplingDefaults d;
  auto number = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto bad = [](const char* key, const nlohmann::json& v) {
    return absl::InvalidArgumentError(
        absl::StrCat("generation_config.json: ", key, " ", v.dump(), " is out of range"));
  };
  if (const auto* t = number("temperature")) {
    if (!t->is_number() || !std::isfinite(t->get<double>()) || t->get<double>() < 0) {
      return bad("temperature", *t);
    }
    d.temperature = t->get<float>();
  }
  if (const auto* k = number("top_k")) {
    if (!k->is_number_integer() || k->get<int64_t>() < 0 || k->get<int64_t>() > INT32_MAX) {
      return bad("top_k", *k);
    }
    d.top_k = k->get<int32_t>();
  }
  if (const auto* p = number("top_p")) {
    if (!p->is_number() || !(p->get<double>() > 0 && p->get<double>() <= 1)) {
      return bad("top_p", *p);
    }
    d.top_p = p->get<float>();
  }
  return d;
}

absl::StatusOr<SamplingDefaults> LoadSamplingDefaults(const std::string& model_dir) {
  std::ifstream in(model_dir + "/generation_config.json", std::ios::binary);
  if (!in) return SamplingDefaults();
  std::ostringstream text;
  text << in.rdbuf();
  auto d = ParseSamplingDefaults(text.str());
  if (!d.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(model_dir, "/", d.status().message()));
  }
  return d;
}

}  // namespace hkv
