#include "tokenizer/gguf_vocab.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

enum GgufType : uint32_t {
  kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64
};

// Bounds-checked little-endian reader over the mapped file.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, std::string path)
      : data_(data), size_(size), path_(std::move(path)) {}

  template <typename T>
  absl::StatusOr<T> Get() {
    if (size_ - pos_ < sizeof(T)) return Truncated();
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  absl::StatusOr<std::string> String() {
    HKV_ASSIGN_OR_RETURN(uint64_t n, Get<uint64_t>());
    if (size_ - pos_ < n) return Truncated();
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  absl::Status Skip(uint64_t bytes) {
    if (size_ - pos_ < bytes) return Truncated();
    pos_ += bytes;
    return absl::OkStatus();
  }
  absl::Status Truncated() const {
    return absl::InvalidArgumentError(absl::StrCat("'", path_, "' is truncated at byte ", pos_));
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string path_;
};

size_t ScalarSize(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kU64: case kI64: case kF64: return 8;
    default: return 0;
  }
}

absl::StatusOr<int64_t> ReadInteger(Reader& r, uint32_t type) {
  switch (type) {
    case kU8: { HKV_ASSIGN_OR_RETURN(uint8_t v, r.Get<uint8_t>()); return v; }
    case kI8: { HKV_ASSIGN_OR_RETURN(int8_t v, r.Get<int8_t>()); return v; }
    case kU16: { HKV_ASSIGN_OR_RETURN(uint16_t v, r.Get<uint16_t>()); return v; }
    case kI16: { HKV_ASSIGN_OR_RETURN(int16_t v, r.Get<int16_t>()); return v; }
    case kU32: { HKV_ASSIGN_OR_RETURN(uint32_t v, r.Get<uint32_t>()); return v; }
    case kI32: { HKV_ASSIGN_OR_RETURN(int32_t v, r.Get<int32_t>()); return v; }
    case kU64: { HKV_ASSIGN_OR_RETURN(uint64_t v, r.Get<uint64_t>()); return static_cast<int64_t>(v); }
    case kI64: { HKV_ASSIGN_OR_RETURN(int64_t v, r.Get<int64_t>()); return v; }
    default: return absl::InvalidArgumentError(absl::StrCat("GGUF type ", type, " is not an integer"));
  }
}

// Reads (or skips) one value of `type` into the vocab field named `key`.
absl::Status ReadValue(Reader& r, uint32_t type, const std::string& key, GgufVocab* v) {
  if (type == kString) {
    HKV_ASSIGN_OR_RETURN(std::string s, r.String());
    if (key == "tokenizer.ggml.model") v->model = s;
    if (key == "tokenizer.ggml.pre") v->pre = s;
    return absl::OkStatus();
  }
  if (type == kArray) {
    HKV_ASSIGN_OR_RETURN(uint32_t item, r.Get<uint32_t>());
    HKV_ASSIGN_OR_RETURN(uint64_t n, r.Get<uint64_t>());
    if (n > (1ULL << 26)) return absl::InvalidArgumentError(absl::StrCat("GGUF array '", key, "' is too long"));
    if (item == kString) {
      std::vector<std::string>* out = key == "tokenizer.ggml.tokens"   ? &v->tokens
                                      : key == "tokenizer.ggml.merges" ? &v->merges
                                                                       : nullptr;
      for (uint64_t i = 0; i < n; ++i) {
        HKV_ASSIGN_OR_RETURN(std::string s, r.String());
        if (out != nullptr) out->push_back(std::move(s));
      }
      return absl::OkStatus();
    }
    if (item == kF32 && key == "tokenizer.ggml.scores") {
      v->scores.resize(n);
      for (uint64_t i = 0; i < n; ++i) {
        HKV_ASSIGN_OR_RETURN(v->scores[i], r.Get<float>());
      }
      return absl::OkStatus();
    }
    if (key == "tokenizer.ggml.token_type" && ScalarSize(item) > 0 && item != kF32) {
      v->token_types.resize(n);
      for (uint64_t i = 0; i < n; ++i) {
        HKV_ASSIGN_OR_RETURN(int64_t t, ReadInteger(r, item));
        v->token_types[i] = static_cast<int32_t>(t);
      }
      return absl::OkStatus();
    }
    if (ScalarSize(item) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF array '", key, "' has item type ", item));
    }
    return r.Skip(n * ScalarSize(item));
  }
  if (ScalarSize(type) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF key '", key, "' has unknown type ", type));
  }
  if (type == kBool) {
    HKV_ASSIGN_OR_RETURN(uint8_t b, r.Get<uint8_t>());
    if (key == "tokenizer.ggml.add_space_prefix") v->add_space_prefix = b != 0;
    return absl::OkStatus();
  }
  if (type == kF32 || type == kF64) return r.Skip(ScalarSize(type));
  HKV_ASSIGN_OR_RETURN(int64_t value, ReadInteger(r, type));
  if (key == "tokenizer.ggml.bos_token_id") v->bos_id = static_cast<int32_t>(value);
  if (key == "tokenizer.ggml.eos_token_id") v->eos_id = static_cast<int32_t>(value);
  if (key == "tokenizer.ggml.unknown_token_id") v->unknown_id = static_cast<int32_t>(value);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GgufVocab> LoadGgufVocab(const std::string& path) {
  HKV_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  Reader r(file.data(), file.size(), path);
  HKV_ASSIGN_OR_RETURN(uint32_t magic, r.Get<uint32_t>());
  if (magic != 0x46554747) {  // "GGUF" little-endian.
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a GGUF file"));
  }
  HKV_ASSIGN_OR_RETURN(uint32_t version, r.Get<uint32_t>());
  if (version != 2 && version != 3) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': GGUF version ", version,
                                                   " is not supported (2, 3)"));
  }
  HKV_ASSIGN_OR_RETURN(uint64_t num_tensors, r.Get<uint64_t>());
  (void)num_tensors;
  HKV_ASSIGN_OR_RETURN(uint64_t num_kv, r.Get<uint64_t>());
  GgufVocab vocab;
  for (uint64_t i = 0; i < num_kv; ++i) {
    HKV_ASSIGN_OR_RETURN(std::string key, r.String());
    HKV_ASSIGN_OR_RETURN(uint32_t type, r.Get<uint32_t>());
    HKV_RETURN_IF_ERROR(ReadValue(r, type, key, &vocab));
  }
  if (vocab.tokens.empty() || vocab.model.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' has no tokenizer vocabulary"));
  }
  if (!vocab.scores.empty() && vocab.scores.size() != vocab.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': scores and tokens differ in size"));
  }
  return vocab;
}

}  // namespace hkv
