// `hkv generate`: one request through the same Engine the server uses.

#include <cstdio>
#include <iostream>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "server/commands.h"
#include "server/model_setup.h"
#include "tokenizer/prompt_limit.h"

namespace hkv {
namespace {

// What one run produced, as the report prints it.
struct GenerateReport {
  std::vector<TokenId> prompt;
  std::vector<int32_t> output;
  std::string text;
  double prefill_ms = 0;
  double decode_tps = 0;
  StreamUsage usage;
};

// Prints the run's JSON object (--json) or, after the streamed text, its summary line.
void PrintReport(const GenerateOptions& options, const GenerateReport& r) {
  const StreamUsage& u = r.usage;
  if (options.json) {
    nlohmann::ordered_json j;
    j["prompt_ids"] = r.prompt;
    j["output_ids"] = r.output;
    j["text"] = r.text;
    j["prefill_ms"] = r.prefill_ms;
    j["decode_tokens_per_s"] = r.decode_tps;
    j["kv_policy"] = options.kv_policy;
    j["kv_tokens_kept"] = u.kv_tokens_kept;
    j["kv_tokens_full"] = u.kv_tokens_full;
    j["kv_bytes_kept"] = u.kv_bytes_kept;
    j["kv_bytes_full"] = u.kv_bytes_full;
    j["seed"] = u.seed;  // --seed S reproduces this output.
    std::cout << j.dump() << "\n";
  } else {
    std::cout << "\n";
    std::cerr << absl::StrFormat(
        "[%d prompt + %d generated tokens; prefill %.1f ms; decode %.1f tokens/s; "
        "KV (%s) kept %d of %d tokens, %d of %d bytes (%.1f%%); seed %u]\n",
        r.prompt.size(), r.output.size(), r.prefill_ms, r.decode_tps, options.kv_policy,
        u.kv_tokens_kept, u.kv_tokens_full, u.kv_bytes_kept, u.kv_bytes_full,
        u.kv_bytes_full > 0 ? 100.0 * u.kv_bytes_kept / u.kv_bytes_full : 100.0, u.seed);
  }
}

}  // namespace

int RunGenerate(const GenerateOptions& options) {
  ServerConfig config = options.server;
  config.default_kv_policy = options.kv_policy;
  config.default_kv_budget = options.kv_budget;
  auto bundle = BuildEngine(config);
  if (!bundle.ok()) {
    std::cerr << "hkv generate: " << bundle.status().message() << "\n";
    return 1;
  }
  Engine& engine = *bundle->engine;
  EngineRequest request;
  const Tokenizer* tokenizer = bundle->loaded.tokenizer.get();
  if (options.use_prompt_ids) {
    request.prompt = options.prompt_ids;
  } else if (tokenizer == nullptr) {
    std::cerr << "hkv generate: this model has no tokenizer: pass --prompt-ids\n";
    return 1;
  } else {
    const PromptByteLimit limit = MakePromptByteLimit(*tokenizer, engine.model_config().max_seq_len,
                                                      options.server.max_prompt_bytes);
    std::string prompt = options.prompt;
    if (options.chat) {
      if (bundle->loaded.chat == nullptr) {
        std::cerr << "hkv generate: this model has no chat template: pass --chat-template FILE\n";
        return 1;
      }
      auto text = bundle->loaded.chat->Apply({{"user", options.prompt}}, true);
      if (!text.ok()) {
        std::cerr << "hkv generate: " << text.status().message() << "\n";
        return 1;
      }
      prompt = std::move(*text);
    }
    // A chat template writes BOS itself when the model wants one.
    auto ids = EncodePrompt(*tokenizer, prompt, /*add_bos=*/!options.chat, limit, EncodeControl());
    if (!ids.ok()) {
      std::cerr << "hkv generate: " << ids.status().message() << "\n";
      return 1;
    }
    request.prompt = std::move(*ids);
  }
  request.sampling = options.sampling;
  const SamplingDefaults& defaults = engine.options().sampling_defaults;
  request.sampling.temperature = options.temperature.value_or(defaults.temperature);
  request.sampling.top_k = options.top_k.value_or(defaults.top_k);
  request.sampling.top_p = options.top_p.value_or(defaults.top_p);
  request.seed = options.seed;
  request.kv_policy = options.kv_policy;
  request.kv_budget = options.kv_budget;
  request.kv_beta = options.beta;
  if (!options.json && tokenizer != nullptr) {
    std::cout << DecodeText(*tokenizer, request.prompt) << std::flush;
  }
  engine.Start();
  const absl::Time start = absl::Now();
  auto stream = engine.Submit(request);
  if (!stream.ok()) {
    std::cerr << "hkv generate: " << stream.status().message() << "\n";
    return 1;
  }
  std::vector<int32_t> output;
  std::string text;
  StreamChunk last;
  absl::Time first_token;
  while (true) {
    std::optional<StreamChunk> chunk = (*stream)->Next(absl::Seconds(1));
    if (!chunk.has_value()) continue;
    if (output.empty() && !chunk->token_ids.empty()) first_token = absl::Now();
    output.insert(output.end(), chunk->token_ids.begin(), chunk->token_ids.end());
    text += chunk->text;
    if (!options.json) {
      std::cout << chunk->text << std::flush;
    }
    if (chunk->finished) {
      last = std::move(*chunk);
      break;
    }
  }
  const absl::Time end = absl::Now();
  engine.Stop();
  if (last.finish == FinishReason::kError) {
    std::cerr << "\nhkv generate: " << last.status.message() << "\n";
    return 1;
  }
  const double prefill_ms = absl::ToDoubleMilliseconds(first_token - start);
  const double decode_s = absl::ToDoubleSeconds(end - first_token);
  const double decode_tps = output.size() > 1 && decode_s > 0 ? (output.size() - 1) / decode_s : 0;
  PrintReport(options, {request.prompt, output, text, prefill_ms, decode_tps, last.usage});
  return 0;
}

}  // namespace hkv
