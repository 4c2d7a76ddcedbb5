#include "model/safetensors.h"

#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

size_t DtypeSize(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // Subnormal: normalise.
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::string Shape(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

}  // namespace

absl::Status SafetensorsCheckpoint::AddFile(const std::string& path) {
  HKV_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  auto file = std::make_shared<MappedFile>(std::move(mapped));
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors '", path, "': ", parts...));
  };
  if (file->size() < 8) return bad("too small for a header");
  uint64_t header_len;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > file->size() - 8 || header_len > (100u << 20)) {
    return bad("header length ", header_len, " exceeds the file (", file->size(), " bytes)");
  }
  const std::string text(reinterpret_cast<const char*>(file->data() + 8), header_len);
  nlohmann::json header = nlohmann::json::parse(text, nullptr, false);
  if (header.is_discarded() || !header.is_object()) return bad("the JSON header is corrupt");
  const uint8_t* base = file->data() + 8 + header_len;
  const size_t data_size = file->size() - 8 - header_len;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets") || !info["data_offsets"].is_array() ||
        info["data_offsets"].size() != 2 || !info["dtype"].is_string() || !info["shape"].is_array()) {
      return bad("tensor '", name, "' has a malformed entry");
    }
    SafetensorsTensor t;
    t.name = name;
    t.file = path;
    t.dtype = info["dtype"].get<std::string>();
    int64_t elements = 1;
    for (const auto& d : info["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("tensor '", name, "' has a bad shape");
      t.shape.push_back(d.get<int64_t>());
      elements *= t.shape.back();
    }
    const auto& off = info["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return bad("tensor '", name, "' has bad data_offsets");
    }
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return bad("tensor '", name, "' lies outside the file (offsets ", begin, "..", end,
                 ", data ", data_size, " bytes): truncated?");
    }
    const size_t size = DtypeSize(t.dtype);
    if (size != 0 && static_cast<uint64_t>(elements) * size != end - begin) {
      return bad("tensor '", name, "' has ", end - begin, " bytes for shape ", Shape(t.shape),
                 " of ", t.dtype);
    }
    t.data = base + begin;
    t.bytes = end - begin;
    if (!tensors_.emplace(name, std::move(t)).second) return bad("tensor '", name, "' appears twice");
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(const std::string& dir) {
  SafetensorsCheckpoint ckpt;
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  if (Exists(index)) {
    std::ifstream in(index);
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
    if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("'", index, "' has no weight_map"));
    }
    std::set<std::string> shards;
    for (const auto& [name, shard] : j["weight_map"].items()) {
      if (!shard.is_string()) return absl::InvalidArgumentError(absl::StrCat("'", index, "': bad shard for ", name));
      shards.insert(shard.get<std::string>());
    }
    for (const std::string& shard : shards) {
      if (shard.find('/') != std::string::npos || !Exists(dir + "/" + shard)) {
        return absl::InvalidArgumentError(
            absl::StrCat("'", index, "' names shard '", shard, "', which is missing"));
      }
      HKV_RETURN_IF_ERROR(ckpt.AddFile(dir + "/" + shard));
    }
    for (const auto& [name, shard] : j["weight_map"].items()) {
      auto it = ckpt.tensors_.find(name);
      if (it == ckpt.tensors_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("'", index, "' maps '", name, "' to '",
                                                       shard.get<std::string>(),
                                                       "', which does not hold it"));
      }
    }
    return ckpt;
  }
  if (!Exists(single)) {
    return absl::NotFoundError(absl::StrCat("no model.safetensors or model.safetensors.index.json in '", dir, "'"));
  }
  HKV_RETURN_IF_ERROR(ckpt.AddFile(single));
  return ckpt;
}

absl::StatusOr<std::vector<float>> SafetensorsCheckpoint::ReadF32(
    const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat("missing tensor '", name, "'"));
  const SafetensorsTensor& t = it->second;
  if (t.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ",
                                                   Shape(t.shape), ", expected ", Shape(shape)));
  }
  size_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    std::memcpy(out.data(), t.data, n * 4);
  } else if (t.dtype == "BF16" || t.dtype == "F16") {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      if (t.dtype == "BF16") {
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&out[i], &bits, 4);
      } else {
        out[i] = HalfToFloat(h);
      }
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has dtype ", t.dtype, " (supported: F32, F16, BF16)"));
  }
  return out;
}

}  // namespace hkv
