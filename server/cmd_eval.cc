// `hkv eval`: every question of a tasks file through the engine in process, for each
// (policy, budget), scored by exact match and QA-F1; prints accuracy x (policy, budget) per task
// family and context length, with the KV kept as a share of full.
//
// Runs on the main thread: it submits requests (at most a window of them in flight, so the
// engine's queue never overflows) and reads their streams; the engine thread runs the steps.

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "headkv/answer_metrics.h"
#include "headkv/kv_policy.h"
#include "headkv/task_file.h"
#include "nlohmann/json.hpp"
#include "server/commands.h"
#include "server/model_setup.h"
#include "tokenizer/prompt_limit.h"

namespace hkv {
namespace {

// One (policy, budget) pass over every task; `full` runs once with budget 0.
struct EvalRun {
  std::string policy;
  int32_t budget = 0;
  std::string Label() const { return budget > 0 ? absl::StrCat(policy, "@", budget) : policy; }
};

// What one (task, run) produced.
struct EvalRecord {
  int32_t task = 0;
  int32_t run = 0;
  std::string response;
  std::string error;  // Non-empty when the request failed.
  bool exact = false;
  double f1 = 0;
  int64_t kv_kept = 0;
  int64_t kv_full = 0;
};

// Sums over the records of one run in one (family, length) group, or over all of them.
struct Tally {
  int64_t n = 0, exact = 0, errors = 0, kv_kept = 0, kv_full = 0;
  double f1 = 0;
  void Add(const EvalRecord& r) {
    ++n;
    exact += r.exact ? 1 : 0;
    errors += r.error.empty() ? 0 : 1;
    f1 += r.f1;
    kv_kept += r.kv_kept;
    kv_full += r.kv_full;
  }
  double ExactShare() const { return n > 0 ? static_cast<double>(exact) / n : 0; }
  double F1Mean() const { return n > 0 ? f1 / n : 0; }
  double KvShare() const { return kv_full > 0 ? static_cast<double>(kv_kept) / kv_full : 1; }
};

using GroupKey = std::pair<std::string, int64_t>;  // (family, length)

struct Summary {
  std::vector<GroupKey> groups;                 // Sorted.
  std::vector<std::map<GroupKey, Tally>> cell;  // [run][group]
  std::vector<Tally> all;                       // [run]
};

Summary Summarize(const std::vector<EvalTask>& tasks, size_t num_runs,
                  const std::vector<EvalRecord>& records) {
  Summary s;
  s.cell.resize(num_runs);
  s.all.resize(num_runs);
  for (const EvalRecord& r : records) {
    const EvalTask& t = tasks[r.task];
    s.cell[r.run][{t.family, t.length}].Add(r);
    s.all[r.run].Add(r);
  }
  for (const EvalTask& t : tasks) s.groups.emplace_back(t.family, t.length);
  std::sort(s.groups.begin(), s.groups.end());
  s.groups.erase(std::unique(s.groups.begin(), s.groups.end()), s.groups.end());
  return s;
}

std::string GroupName(const GroupKey& g) {
  return g.second > 0 ? absl::StrCat(g.first, "/", g.second) : g.first;
}

// The text table: one row per run, exact match (%) per group, then over all tasks.
void PrintTable(const std::vector<EvalRun>& runs, const Summary& s, std::ostream& out) {
  size_t width = 8;
  for (const GroupKey& g : s.groups) width = std::max(width, GroupName(g).size() + 1);
  std::string header = absl::StrFormat("%-18s %8s", "policy@budget", "kv_kept");
  for (const GroupKey& g : s.groups)
    absl::StrAppend(&header, absl::StrFormat(" %*s", width, GroupName(g)));
  absl::StrAppend(&header, absl::StrFormat(" %8s %8s", "em_all", "f1_all"));
  out << "exact match (%) per family/length; kv_kept = KV tokens kept / full\n" << header << "\n";
  for (size_t r = 0; r < runs.size(); ++r) {
    std::string line =
        absl::StrFormat("%-18s %7.1f%%", runs[r].Label(), 100.0 * s.all[r].KvShare());
    for (const GroupKey& g : s.groups) {
      auto it = s.cell[r].find(g);
      const double em = it == s.cell[r].end() ? 0 : it->second.ExactShare();
      absl::StrAppend(&line, absl::StrFormat(" %*.1f", width, 100.0 * em));
    }
    absl::StrAppend(&line, absl::StrFormat(" %8.1f %8.1f", 100.0 * s.all[r].ExactShare(),
                                           100.0 * s.all[r].F1Mean()));
    if (s.all[r].errors > 0) absl::StrAppend(&line, "  (", s.all[r].errors, " failed)");
    out << line << "\n";
  }
}

nlohmann::ordered_json TallyJson(const Tally& t) {
  nlohmann::ordered_json j;
  j["n"] = t.n;
  j["exact_match"] = t.ExactShare();
  j["f1"] = t.F1Mean();
  j["errors"] = t.errors;
  j["kv_tokens_kept"] = t.kv_kept;
  j["kv_tokens_full"] = t.kv_full;
  j["kv_kept_share"] = t.KvShare();
  return j;
}

// --json: one line per record, then one line holding the summary table.
void PrintJson(const std::vector<EvalTask>& tasks, const std::vector<EvalRun>& runs,
               const std::vector<EvalRecord>& records, const Summary& s, double seconds,
               const std::string& device) {
  for (const EvalRecord& r : records) {
    const EvalTask& t = tasks[r.task];
    nlohmann::ordered_json j;
    j["id"] = t.id;
    j["family"] = t.family;
    j["length"] = t.length;
    j["policy"] = runs[r.run].policy;
    j["budget"] = runs[r.run].budget;
    j["response"] = r.response;
    j["exact_match"] = r.exact;
    j["f1"] = r.f1;
    j["kv_tokens_kept"] = r.kv_kept;
    j["kv_tokens_full"] = r.kv_full;
    if (!r.error.empty()) j["error"] = r.error;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  nlohmann::ordered_json summary = nlohmann::ordered_json::array();
  for (size_t r = 0; r < runs.size(); ++r) {
    nlohmann::ordered_json row;
    row["policy"] = runs[r].policy;
    row["budget"] = runs[r].budget;
    row["all"] = TallyJson(s.all[r]);
    nlohmann::ordered_json groups = nlohmann::ordered_json::array();
    for (const auto& [key, tally] : s.cell[r]) {
      nlohmann::ordered_json g = TallyJson(tally);
      g["family"] = key.first;
      g["length"] = key.second;
      groups.push_back(std::move(g));
    }
    row["groups"] = std::move(groups);
    summary.push_back(std::move(row));
  }
  nlohmann::ordered_json j;
  j["tasks"] = tasks.size();
  j["device"] = device;
  j["seconds"] = seconds;
  j["summary"] = std::move(summary);
  std::cout << j.dump() << "\n";
}

// The (policy, budget) runs: full once, every other policy at every budget. Checks each plan
// against the engine (INVALID_ARGUMENT for a budget above the context, headkv without scores).
absl::StatusOr<std::vector<EvalRun>> MakeRuns(const EvalOptions& o, Engine& engine) {
  if (o.policies.empty()) return absl::InvalidArgumentError("--policies is empty");
  std::vector<EvalRun> runs;
  for (const std::string& p : o.policies) {
    auto name = ParsePolicyName(p);
    if (!name.ok()) return name.status();
    if (*name == KvPolicyName::kHeadKv && o.server.head_scores.empty()) {
      return absl::InvalidArgumentError(
          "the headkv policy needs --head-scores FILE (`hkv headkv-score` writes one)");
    }
    if (*name == KvPolicyName::kFull) {
      runs.push_back({p, 0});
      continue;
    }
    if (o.budgets.empty()) return absl::InvalidArgumentError("--budgets is empty");
    for (int32_t b : o.budgets) {
      if (b < 1) return absl::InvalidArgumentError(absl::StrCat("budget ", b, " is not >= 1"));
      auto plan = engine.PlanFor(p, b, o.beta);
      if (!plan.ok()) return plan.status();
      runs.push_back({p, b});
    }
  }
  return runs;
}

// Prompt ids of every task: its prompt_ids, or its prompt encoded with BOS.
absl::StatusOr<std::vector<std::vector<TokenId>>> PromptIds(const std::vector<EvalTask>& tasks,
                                                            const EngineBundle& bundle,
                                                            const ServerConfig& config) {
  const Tokenizer* tokenizer = bundle.loaded.tokenizer.get();
  std::vector<std::vector<TokenId>> out;
  for (const EvalTask& t : tasks) {
    if (!t.prompt_ids.empty()) {
      out.emplace_back(t.prompt_ids.begin(), t.prompt_ids.end());
      continue;
    }
    if (tokenizer == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("task ", t.id, ": this model has no tokenizer: give prompt_ids"));
    }
    const PromptByteLimit limit = MakePromptByteLimit(
        *tokenizer, bundle.engine->model_config().max_seq_len, config.max_prompt_bytes);
    auto ids = EncodePrompt(*tokenizer, t.prompt, /*add_bos=*/true, limit, EncodeControl());
    if (!ids.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("task ", t.id, ": ", ids.status().message()));
    }
    out.push_back(*std::move(ids));
  }
  return out;
}

// Cuts the response at its first newline or `answer_stop`, then scores it against every answer.
// NOTE(eval): the stops are applied here rather than as the request's stop strings because a
// request that a stop string ends reports no KV usage (Engine::FinishChunk gets the usage of a
// step that had not finished); the model runs on to EOS or max_new_tokens instead.
void Score(const EvalTask& task, const std::string& answer_stop, EvalRecord& r) {
  size_t end = r.response.find('\n');
  if (!answer_stop.empty()) end = std::min(end, r.response.find(answer_stop));
  if (end != std::string::npos) r.response.resize(end);
  for (const std::string& answer : task.answers) {
    r.exact = r.exact || ExactMatch(r.response, answer);
    r.f1 = std::max(r.f1, QaF1(r.response, answer));
  }
}

// A request in flight and the record it fills.
struct InFlight {
  std::shared_ptr<RequestStream> stream;
  size_t record = 0;
};

// Reads what is ready of `f`'s stream (waiting up to `wait`); true once it finished.
bool Drain(InFlight& f, absl::Duration wait, std::vector<EvalRecord>& records) {
  EvalRecord& r = records[f.record];
  while (true) {
    std::optional<StreamChunk> chunk = f.stream->Next(wait);
    if (!chunk.has_value()) return false;
    wait = absl::ZeroDuration();
    r.response += chunk->text;
    if (!chunk->finished) continue;
    if (chunk->finish == FinishReason::kError) r.error = std::string(chunk->status.message());
    r.kv_kept = chunk->usage.kv_tokens_kept;
    r.kv_full = chunk->usage.kv_tokens_full;
    return true;
  }
}

// Runs every (task, run) pair through the engine, keeping at most `window` in flight.
absl::Status RunAll(const EvalOptions& o, Engine& engine, const std::vector<EvalRun>& runs,
                    const std::vector<std::vector<TokenId>>& prompts,
                    std::vector<EvalRecord>& records, size_t window) {
  std::vector<InFlight> flight;
  size_t next = 0, done = 0;
  while (next < records.size() || !flight.empty()) {
    while (next < records.size() && flight.size() < window) {
      EvalRecord& r = records[next];
      EngineRequest request;
      request.prompt = prompts[r.task];
      request.sampling.temperature = 0;  // Greedy.
      request.sampling.max_tokens = o.max_new_tokens;
      request.seed = 0;
      request.kv_policy = runs[r.run].policy;
      request.kv_budget = runs[r.run].budget;
      request.kv_beta = o.beta;
      auto stream = engine.Submit(std::move(request));
      if (stream.ok()) {
        flight.push_back({*std::move(stream), next++});
        continue;
      }
      // A task the engine refuses (too long for the context, say) fails alone.
      const absl::StatusCode code = stream.status().code();
      if (code != absl::StatusCode::kInvalidArgument &&
          code != absl::StatusCode::kResourceExhausted) {
        return stream.status();
      }
      r.error = std::string(stream.status().message());
      ++next;
      ++done;
    }
    // Wait on the oldest, then sweep the rest without waiting.
    for (size_t i = 0; i < flight.size();) {
      if (Drain(flight[i], i == 0 ? absl::Milliseconds(20) : absl::ZeroDuration(), records)) {
        flight.erase(flight.begin() + i);
        // Progress on stderr at every tenth (long CPU runs), never into --json's stdout.
        ++done;
        if (done * 10 / records.size() != (done - 1) * 10 / records.size()) {
          std::cerr << absl::StrFormat("hkv eval: %d of %d requests done\n", done, records.size());
        }
      } else {
        ++i;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunEval(const EvalOptions& options) {
  auto fail = [](const absl::Status& s) {
    std::cerr << "hkv eval: " << s.message() << "\n";
    return 1;
  };
  auto tasks = LoadTaskFile(options.tasks);
  if (!tasks.ok()) return fail(tasks.status());
  if (options.max_new_tokens < 1) return fail(absl::InvalidArgumentError("--max-new-tokens < 1"));
  auto bundle = BuildEngine(options.server);
  if (!bundle.ok()) return fail(bundle.status());
  Engine& engine = *bundle->engine;
  auto runs = MakeRuns(options, engine);
  if (!runs.ok()) return fail(runs.status());
  auto prompts = PromptIds(*tasks, *bundle, options.server);
  if (!prompts.ok()) return fail(prompts.status());
  std::vector<EvalRecord> records;
  for (size_t r = 0; r < runs->size(); ++r) {
    for (size_t t = 0; t < tasks->size(); ++t) {
      EvalRecord rec;
      rec.task = static_cast<int32_t>(t);
      rec.run = static_cast<int32_t>(r);
      records.push_back(std::move(rec));
    }
  }
  const size_t window = static_cast<size_t>(
      std::max(1, std::min(options.server.max_queue, 2 * options.server.max_seqs)));
  const std::string device = engine.worker_name();
  if (!options.json) {
    std::cerr << absl::StrFormat("hkv eval: %d tasks x %d runs on %s\n", tasks->size(),
                                 runs->size(), device);
  }
  engine.Start();
  const absl::Time start = absl::Now();
  absl::Status status = RunAll(options, engine, *runs, *prompts, records, window);
  engine.Stop();
  if (!status.ok()) return fail(status);
  for (EvalRecord& r : records) Score((*tasks)[r.task], options.answer_stop, r);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const Summary summary = Summarize(*tasks, runs->size(), records);
  if (options.json) {
    PrintJson(*tasks, *runs, records, summary, seconds, device);
  } else {
    PrintTable(*runs, summary, std::cout);
    std::cout << absl::StrFormat("%d requests in %.1f s\n", records.size(), seconds);
  }
  for (const Tally& t : summary.all) {
    if (t.errors > 0) return fail(absl::InternalError("some requests failed (see the table)"));
  }
  return 0;
}

}  // namespace hkv
