// `hkv headkv-score`: estimates HeadKV head-importance scores of a model from needle probes
// (a probe file, or the paper's grid from a haystack and needles) and writes the published
// score format that --head-scores reads.

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "headkv/head_importance.h"
#include "headkv/probe_file.h"
#include "nlohmann/json.hpp"
#include "server/commands.h"
#include "server/headkv_probe_runner.h"
#include "server/model_setup.h"

namespace hkv {
namespace {

constexpr size_t kMaxTextFileBytes = 64 << 20;  // A haystack or needles file.
constexpr int32_t kMaxNewTokens = 1024;
// Probes decoded together at most (also bounded by --max-seqs and the pool): the CUDA probe
// holds one layer's rows of all of them, [probes, query heads, context] fp32.
constexpr int32_t kMaxProbeBatch = 64;

absl::StatusOr<std::string> ReadText(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
  const std::streamoff size = in.tellg();  // Checked before reading: the file may be huge.
  if (size < 0 || static_cast<size_t>(size) > kMaxTextFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path, " is over ", kMaxTextFileBytes, " bytes"));
  }
  in.seekg(0);
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), size);
  if (!in) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
  return text;
}

// Needles file: JSONL of {"needle", "question", "answer"}, the answer inside the needle.
absl::StatusOr<std::vector<NeedleSpec>> ParseNeedles(const std::string& text) {
  std::vector<NeedleSpec> needles;
  std::istringstream lines(text);
  std::string line;
  for (int line_no = 1; std::getline(lines, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    auto field = [&doc](const char* name) -> const nlohmann::json* {
      return doc.is_object() && doc.contains(name) && doc[name].is_string() ? &doc[name] : nullptr;
    };
    if (field("needle") == nullptr || field("question") == nullptr || field("answer") == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--needles line ", line_no, ": not an object with string needle, question, answer"));
    }
    needles.push_back({doc["needle"].get<std::string>(), doc["question"].get<std::string>(),
                       doc["answer"].get<std::string>()});
  }
  if (needles.empty()) return absl::InvalidArgumentError("--needles: no needles");
  return needles;
}

// The probes: --probes FILE, or the grid of --haystack x --needles.
absl::StatusOr<std::vector<Probe>> LoadProbes(const HeadkvScoreOptions& o,
                                              const Tokenizer& tokenizer) {
  const bool grid = !o.haystack.empty() || !o.needles.empty();
  if (o.probes.empty() == !grid) {
    return absl::InvalidArgumentError(
        "give --probes FILE, or --haystack FILE --needles FILE (not both)");
  }
  if (!grid) return LoadProbeFile(o.probes);
  if (o.haystack.empty() || o.needles.empty()) {
    return absl::InvalidArgumentError("the grid needs both --haystack and --needles");
  }
  HKV_ASSIGN_OR_RETURN(const std::string haystack, ReadText(o.haystack, "--haystack"));
  HKV_ASSIGN_OR_RETURN(const std::string needles_text, ReadText(o.needles, "--needles"));
  HKV_ASSIGN_OR_RETURN(const std::vector<NeedleSpec> needles, ParseNeedles(needles_text));
  GridOptions grid_options;
  grid_options.context_lengths = o.context_lengths;
  grid_options.depths = o.depths;
  grid_options.length = [&tokenizer](std::string_view text) {
    return static_cast<int64_t>(tokenizer.Encode(text, /*add_bos=*/false).size());
  };
  std::vector<Probe> probes;
  for (size_t i = 0; i < needles.size(); ++i) {
    HKV_ASSIGN_OR_RETURN(std::vector<Probe> built,
                         BuildProbeGrid(haystack, needles[i], grid_options));
    for (Probe& p : built) {
      p.id = absl::StrCat("needle", i, "-", p.id);
      probes.push_back(std::move(p));
    }
  }
  return probes;
}

void PrintReport(const HeadkvScoreOptions& o, const ModelConfig& model, const std::string& device,
                 const ProbeRunReport& report, const HeadScoreTable& table, double seconds) {
  const std::vector<double> means = table.Means();
  if (!o.json) {
    for (const ProbeOutcome& p : report.probes) {
      std::cerr << absl::StrFormat("%-28s %s %.2f %s\n", p.id, p.accepted ? "accepted" : "rejected",
                                   p.metric, nlohmann::json(p.response).dump());
    }
    std::cout << absl::StrFormat("%d probes run, %d accepted, %.1f s on %s; scores in %s\n",
                                 report.probes.size(), report.num_accepted, seconds, device, o.out);
    return;
  }
  nlohmann::ordered_json j;
  j["probes_run"] = report.probes.size();
  j["probes_accepted"] = report.num_accepted;
  j["seconds"] = seconds;
  j["method"] = o.method;
  j["device"] = device;
  j["out"] = o.out;
  nlohmann::ordered_json heads = nlohmann::ordered_json::object();
  for (size_t i = 0; i < means.size(); ++i) {
    heads[absl::StrCat(i / model.num_heads, "-", i % model.num_heads)] = means[i];
  }
  j["heads"] = std::move(heads);
  nlohmann::ordered_json probes = nlohmann::ordered_json::array();
  for (const ProbeOutcome& p : report.probes) {
    probes.push_back({{"id", p.id},
                      {"response", p.response},
                      {"metric", p.metric},
                      {"accepted", p.accepted},
                      {"generated_tokens", p.output.size()}});
  }
  j["probes"] = std::move(probes);
  std::cout << j.dump() << "\n";
}

absl::StatusOr<ProbeMethod> ParseMethod(const std::string& name) {
  if (name == "r2") return ProbeMethod::kR2;
  if (name == "r") return ProbeMethod::kR;
  return absl::InvalidArgumentError(absl::StrCat("--method ", name, ": expected r2 or r"));
}

absl::Status CheckOptions(const HeadkvScoreOptions& o) {
  if (o.out.empty()) return absl::InvalidArgumentError("--out FILE is required");
  if (o.max_new_tokens < 0 || o.max_new_tokens > kMaxNewTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-new-tokens ", o.max_new_tokens, " outside [0, ", kMaxNewTokens, "]"));
  }
  if (o.server.tensor_parallel_size != 1) {
    return absl::InvalidArgumentError("headkv-score runs on one device (--tensor-parallel-size 1)");
  }
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text << "\n";
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat("--out: cannot write ", path));
  return absl::OkStatus();
}

absl::Status Run(const HeadkvScoreOptions& o) {
  HKV_RETURN_IF_ERROR(CheckOptions(o));
  HKV_ASSIGN_OR_RETURN(const ProbeMethod method, ParseMethod(o.method));
  ServerConfig config = o.server;
  HKV_ASSIGN_OR_RETURN(LoadedModel loaded,
                       LoadModelAndTokenizer(config.model, config.tokenizer, config.dummy_weights,
                                             config.device == "cuda", config.max_model_len));
  if (loaded.tokenizer == nullptr) {
    return absl::InvalidArgumentError("this model has no tokenizer; probes are text");
  }
  const ModelConfig& m = loaded.model->config;
  config.device = ResolveDevice(config.device, m);
  // The device first: a model it cannot serve is refused before any probe is read.
  HKV_ASSIGN_OR_RETURN(std::unique_ptr<Worker> worker, MakeWorker(config, loaded.model));
  HKV_ASSIGN_OR_RETURN(const std::vector<Probe> probes, LoadProbes(o, *loaded.tokenizer));
  std::vector<PreparedProbe> prepared;
  for (const Probe& p : probes) {
    HKV_ASSIGN_OR_RETURN(PreparedProbe one,
                         PrepareProbe(p, *loaded.tokenizer, o.max_new_tokens, m.max_seq_len));
    prepared.push_back(std::move(one));
  }
  ProbeRunOptions run;
  run.method = method;
  run.max_seqs = std::min(config.max_seqs, kMaxProbeBatch);
  run.max_step_tokens = config.max_batch_tokens;
  run.max_pool_blocks = config.kv_pool_blocks;
  if (config.device == "cpu") {  // The host pool: --kv-pool-blocks or --kv-pool-gb, as serve's.
    HKV_ASSIGN_OR_RETURN(const KvPoolSizing sizing, SizeKvPool(config, m, sizeof(float)));
    run.max_pool_blocks = sizing.num_blocks;
  }
  run.block_size = config.block_size;
  const absl::Time start = absl::Now();
  HKV_ASSIGN_OR_RETURN(const ProbeRunReport report,
                       RunProbes(worker.get(), *loaded.tokenizer, prepared, run));
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  HeadScoreTable table(m.num_layers, m.num_heads);
  for (const ProbeOutcome& p : report.probes) {
    if (p.accepted) HKV_RETURN_IF_ERROR(table.AddProbe(p.scores));
  }
  PrintReport(o, m, worker->name(), report, table, seconds);
  HKV_ASSIGN_OR_RETURN(const std::string json, table.ToJson());
  return WriteFile(o.out, json);
}

}  // namespace

int RunHeadkvScore(const HeadkvScoreOptions& options) {
  const absl::Status s = Run(options);
  if (!s.ok()) {
    std::cerr << "hkv headkv-score: " << s.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace hkv
