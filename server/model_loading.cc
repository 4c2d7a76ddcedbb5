// LoadModelAndTokenizer (declared in model_setup.h): a Hugging Face directory, a llama2.c
// checkpoint or random weights, with the tokenizer and chat template that go with it.
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>

#include "absl/strings/str_format.h"
#include "common/quote.h"
#include "common/status_macros.h"
#include "model/dummy_weights.h"
#include "model/generation_config.h"
#include "model/hf_config.h"
#include "model/hf_loader.h"
#include "model/llama2c_loader.h"
#include "server/model_setup.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/llama2c_tokenizer.h"

namespace hkv {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// A special token the template writes as text but the vocabulary does not hold as one token
// (tokenizer_config.json and tokenizer.json disagree) is tokenized as plain text: the model
// then sees a prompt it was not tuned on, so say so at load. Not a refusal, as in transformers.
void WarnAboutSpecialTokens(const LoadedModel& loaded) {
  if (loaded.tokenizer == nullptr || loaded.chat == nullptr) return;
  const ChatSpecialTokens& t = loaded.chat->tokens();
  for (const auto& [name, text] :
       {std::pair<const char*, const std::optional<std::string>&>("bos_token", t.bos_token),
        {"eos_token", t.eos_token}}) {
    if (!text.has_value() || text->empty()) continue;
    auto ids = loaded.tokenizer->TryEncode(*text, /*add_bos=*/false, EncodeControl());
    if (ids.ok() && ids->size() != 1) {
      std::cerr << "warning: the chat template's " << name << " " << QuoteForError(*text)
                << " is not one token of the vocabulary (" << ids->size() << " tokens)\n";
    }
  }
}

// Loads `out->chat` from `dir` (or the `override_path` file). A model without a template has
// no chat; one whose template does not parse is served without chat, with a warning; an
// explicit --chat-template that fails is an error.
absl::Status LoadChat(const std::string& dir, const std::string& override_path, LoadedModel* out) {
  auto chat = LoadChatTemplate(dir, override_path);
  if (chat.ok()) {
    out->chat = std::move(*chat);
    WarnAboutSpecialTokens(*out);
    return absl::OkStatus();
  }
  if (!override_path.empty()) return chat.status();
  if (chat.status().code() != absl::StatusCode::kNotFound) {
    std::cerr << "warning: serving without chat: " << chat.status().message() << "\n";
  }
  return absl::OkStatus();
}

// The tokenizer of a random-weights model: a llama2.c one named by `tokenizer_path`, or the
// tokenizer.json (and chat template) of a Hugging Face directory, or none.
absl::Status LoadDummyTokenizer(const std::string& model_path, const std::string& tokenizer_path,
                                const std::string& chat_template, LoadedModel* out) {
  if (!tokenizer_path.empty()) {
    HKV_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
                         LoadLlama2cTokenizer(tokenizer_path, out->model->config.vocab_size));
    out->tokenizer = std::move(tok);
  } else if (IsDirectory(model_path)) {
    auto tok = LoadHfTokenizer(model_path);
    if (tok.ok()) {
      out->tokenizer = std::move(*tok);
      HKV_RETURN_IF_ERROR(LoadChat(model_path, chat_template, out));
    } else if (tok.status().code() != absl::StatusCode::kNotFound) {
      return tok.status();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedModel> LoadModelAndTokenizerImpl(const std::string& model_path,
                                                      const std::string& tokenizer_path,
                                                      bool dummy_weights, bool dummy_on_device,
                                                      const std::string& chat_template);

}  // namespace

absl::StatusOr<LoadedModel> LoadModelAndTokenizer(const std::string& model_path,
                                                  const std::string& tokenizer_path,
                                                  bool dummy_weights, bool dummy_on_device,
                                                  int32_t max_model_len,
                                                  const std::string& chat_template) {
  HKV_ASSIGN_OR_RETURN(LoadedModel out,
                       LoadModelAndTokenizerImpl(model_path, tokenizer_path, dummy_weights,
                                                 dummy_on_device, chat_template));
  if (IsDirectory(model_path)) {
    HKV_ASSIGN_OR_RETURN(out.sampling_defaults, LoadSamplingDefaults(model_path));
  }
  if (max_model_len > 0) {
    // The model is not shared yet: adjusting its context length in place is safe.
    std::const_pointer_cast<Model>(out.model)->config.max_seq_len = max_model_len;
  }
  return out;
}

namespace {

absl::StatusOr<LoadedModel> LoadModelAndTokenizerImpl(const std::string& model_path,
                                                      const std::string& tokenizer_path,
                                                      bool dummy_weights, bool dummy_on_device,
                                                      const std::string& chat_template) {
  LoadedModel out;
  if (dummy_weights && dummy_on_device) {
    HKV_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(model_path));
    HKV_RETURN_IF_ERROR(ValidateModelConfig(config));
    auto model = std::make_shared<Model>();
    model->config = std::move(config);
    model->device_dummy_seed = 0;
    out.model = std::move(model);
    HKV_RETURN_IF_ERROR(LoadDummyTokenizer(model_path, tokenizer_path, chat_template, &out));
    return out;
  }
  if (dummy_weights) {
    HKV_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(model_path));
    // Weights are built in host memory as fp32 first: refuse rather than be OOM-killed.
    const double params = static_cast<double>(config.num_layers) *
                              (2.0 * config.dim * (config.q_size() + config.kv_size()) +
                               3.0 * config.dim * config.hidden_dim) +
                          (config.tie_embeddings ? 1.0 : 2.0) * config.vocab_size * config.dim;
    const double available = static_cast<double>(sysconf(_SC_AVPHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    if (params * 4 > 0.9 * available) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "random weights for %s need %.1f GiB of host memory (fp32) but %.1f GiB is free",
          config.name, params * 4 / 1073741824.0, available / 1073741824.0));
    }
    HKV_ASSIGN_OR_RETURN(Model model, MakeDummyModel(config, /*seed=*/0));
    out.model = std::make_shared<Model>(std::move(model));
    HKV_RETURN_IF_ERROR(LoadDummyTokenizer(model_path, tokenizer_path, chat_template, &out));
    return out;
  }
  if (IsDirectory(model_path)) {
    HKV_ASSIGN_OR_RETURN(Model model, LoadHfModel(model_path));
    out.model = std::make_shared<Model>(std::move(model));
    const std::string dir = tokenizer_path.empty() ? model_path : tokenizer_path;
    auto tok = LoadHfTokenizer(dir);
    if (tok.ok()) {
      out.tokenizer = std::move(*tok);
      HKV_RETURN_IF_ERROR(LoadChat(dir, chat_template, &out));
    } else if (tok.status().code() != absl::StatusCode::kNotFound) {
      return tok.status();
    }
    return out;
  }
  HKV_ASSIGN_OR_RETURN(Model model, LoadLlama2cCheckpoint(model_path));
  auto shared = std::make_shared<Model>(std::move(model));
  const std::string path =
      tokenizer_path.empty() ? Dirname(model_path) + "/tok512.bin" : tokenizer_path;
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
                       LoadLlama2cTokenizer(path, shared->config.vocab_size));
  out.tokenizer = std::move(tok);
  out.model = std::move(shared);
  // A llama2.c checkpoint has no chat template of its own; --chat-template gives it one.
  if (!chat_template.empty()) {
    HKV_RETURN_IF_ERROR(LoadChat(Dirname(model_path), chat_template, &out));
  }
  return out;
}

}  // namespace

}  // namespace hkv
