// hkv: the command-line entry point. Flags are parsed here and nowhere else.
//
//   hkv generate [--model PATH] [--prompt TEXT | --prompt-ids 1,2,3] [--max-tokens N] ...
//   hkv serve [--config FILE] [--model PATH] [--port 50051] [--http-port 8000] ...
//   hkv headkv-plan --scores FILE --budget B [--beta X] [--kv-heads N] [--granularity G] --json
//   hkv headkv-score --probes FILE --method r2|r --out FILE [--device D] [--json]
//   hkv bench-serve [--target HOST:PORT] [--num-requests N] [--concurrency C | --request-rate R]
//   hkv eval --model DIR --tasks FILE [--policies P,..] [--budgets B,..] [--head-scores F] --json
//   hkv --help | hkv help [COMMAND] | hkv COMMAND --help      (a command's flags; exit 0)

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "common/paths.h"
#include "server/cli_usage.h"
#include "server/commands.h"
#include "server/server_config.h"
#include "server/server_options.h"

// The server options (server_options.h): one flag per config key. The flags are defined here,
// in main.cc, so that `hkv serve --help` finds them beside --model.
#define HKV_DEFINE_OPTION_FLAG(type, name, default_value, help) \
  ABSL_FLAG(type, name, default_value, help);
HKV_SERVER_OPTIONS(HKV_DEFINE_OPTION_FLAG)
#undef HKV_DEFINE_OPTION_FLAG
// Flags of serve that are not config keys.
ABSL_FLAG(std::string, config, "", "serve: YAML or JSON config file (flags override it)");
ABSL_FLAG(std::string, dist_addr, "",
          "Multi-node: node 0's HOST[:PORT] (env LWS_LEADER_ADDRESS; port 29500 by default)");
ABSL_FLAG(int32_t, world_size, 0,
          "Multi-node: nodes (processes) in the group (env LWS_GROUP_SIZE); each runs "
          "tensor_parallel_size / world_size GPUs");
ABSL_FLAG(int32_t, rank, -1,
          "Multi-node: this node's index, 0 = the serving node (env "
          "LWS_WORKER_INDEX)");
ABSL_FLAG(std::string, dist_token, "",
          "Multi-node: shared secret every node must present to join (env HKV_DIST_TOKEN; "
          "the same on every node)");
ABSL_FLAG(bool, print_config, false, "serve: print the effective config as JSON and exit");
// generate.
ABSL_FLAG(std::string, prompt, "", "generate: prompt text");
ABSL_FLAG(std::string, prompt_ids, "", "generate: comma-separated prompt token ids");
ABSL_FLAG(int32_t, max_tokens, 256, "generate: tokens to generate at most");
ABSL_FLAG(double, temperature, 0.0,
          "generate: sampling temperature (0 = greedy; unset: the model's generation_config.json, "
          "else 0)");
ABSL_FLAG(int32_t, top_k, 0, "generate: top-k (0 = off; unset: the model's default, else 0)");
ABSL_FLAG(double, top_p, 1.0, "generate: top-p (1 = off; unset: the model's default, else 1)");
ABSL_FLAG(bool, chat, false,
          "generate: send --prompt as one user message through the model's chat template (or "
          "--chat-template FILE)");
ABSL_FLAG(uint64_t, seed, 0,
          "generate: sampling seed (unset: a fresh random one, printed); bench-serve: seed of "
          "the synthetic prompts");
ABSL_FLAG(bool, ignore_eos, false, "generate: keep going past EOS");
ABSL_FLAG(std::string, kv_policy, "full", "generate: full|snapkv|pyramidkv|adakv|headkv");
ABSL_FLAG(int32_t, kv_budget, 128, "generate: tokens kept per head on average (window incl.)");
ABSL_FLAG(double, beta, 1.01, "HeadKV beta (> 1)");
ABSL_FLAG(bool, json, false, "Print one JSON object");
// headkv-plan.
ABSL_FLAG(std::string, scores, "", "headkv-plan: score file");
ABSL_FLAG(int32_t, budget, 128, "headkv-plan: budget B");
ABSL_FLAG(int32_t, kv_heads, 0, "headkv-plan: KV heads (kv_head granularity)");
ABSL_FLAG(std::string, granularity, "kv_head", "headkv-plan: query_head | kv_head");
// headkv-score.
ABSL_FLAG(std::string, probes, "", "headkv-score: JSONL probe file");
ABSL_FLAG(std::string, haystack, "", "headkv-score: grid haystack text file (with --needles)");
ABSL_FLAG(std::string, needles, "",
          "headkv-score: grid needles, JSONL {\"needle\", \"question\", \"answer\"}");
ABSL_FLAG(std::string, context_lengths, "1024,2048,4096",
          "headkv-score: grid prompt lengths in tokens, comma-separated");
ABSL_FLAG(std::string, depths, "0,0.25,0.5,0.75,1",
          "headkv-score: grid needle depths in [0, 1], comma-separated");
ABSL_FLAG(std::string, method, "r2", "headkv-score: r2 (HeadKV) | r (retrieval heads)");
ABSL_FLAG(std::string, out, "", "headkv-score: score file to write");
ABSL_FLAG(int32_t, max_new_tokens, 0,
          "headkv-score: tokens to decode per probe at most (0 = the answer's length); eval: "
          "tokens generated per question at most (0 = 32)");
// bench-serve.
ABSL_FLAG(std::string, target, "127.0.0.1:50051", "bench-serve: server address");
ABSL_FLAG(int32_t, num_requests, 64, "bench-serve: requests to send");
ABSL_FLAG(int32_t, concurrency, 8, "bench-serve: requests in flight (closed loop)");
ABSL_FLAG(double, request_rate, 0, "bench-serve: Poisson arrival rate (0 = closed loop)");
ABSL_FLAG(int32_t, input_len, 32, "bench-serve: synthetic prompt tokens");
ABSL_FLAG(int32_t, output_len, 32, "bench-serve: tokens to generate per request");
ABSL_FLAG(double, range_ratio, 0,
          "bench-serve: lengths uniform in [len*(1-r), len*(1+r)] (ShareGPT-like spread)");
ABSL_FLAG(std::string, prompts_file, "", "bench-serve: prompts, one per line");
ABSL_FLAG(double, slo_ttft_ms, 0, "bench-serve: TTFT SLO for goodput (0 = none)");
ABSL_FLAG(double, slo_tpot_ms, 0, "bench-serve: TPOT SLO for goodput (0 = none)");
ABSL_FLAG(std::string, json_out, "", "bench-serve: also write the JSON report here");
// eval.
ABSL_FLAG(std::string, tasks, "", "eval: tasks file (JSONL: id, prompt, answer, family, length)");
ABSL_FLAG(std::string, policies, "full,snapkv,pyramidkv,adakv,headkv",
          "eval: comma-separated KV policies (full runs once; headkv needs --head-scores)");
ABSL_FLAG(std::string, budgets, "16,32,64,128", "eval: comma-separated budgets B per policy");
ABSL_FLAG(std::string, answer_stop, "",
          "eval: a stop string besides newline and EOS ('.' for tests/data/needle)");
ABSL_FLAG(std::string, backend, "hkv",
          "bench-serve: hkv (the gRPC API at --target) | openai (POST /v1/completions, streamed, "
          "at the HTTP API's --target HOST:PORT)");
ABSL_FLAG(std::string, token_times_out, "",
          "bench-serve: also write each request's send and token arrival times (Unix s, JSONL)");

namespace hkv {
namespace {

// Flags given on the command line (Debian's Abseil keeps IsSpecifiedOnCommandLine private), so
// that they, and only they, override the config file. Filled by main() before parsing.
std::set<std::string>& SpecifiedFlags() {
  static auto* flags = new std::set<std::string>();
  return *flags;
}

// Every value of a repeated --api-key (absl keeps only the last), joined by commas.
std::vector<std::string>& RepeatedApiKeys() {
  static auto* keys = new std::vector<std::string>();
  return *keys;
}

bool Specified(const char* name) { return SpecifiedFlags().count(name) > 0; }

// Builds the server config: defaults, then --config FILE, then flags given on the command line.
absl::StatusOr<ServerConfig> ConfigFromFlags() {
  ServerConfig c;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::Status s = LoadServerConfigFile(absl::GetFlag(FLAGS_config), &c);
    if (!s.ok()) return s;
  }
#define HKV_OVERRIDE(type, name, default_value, help) \
  if (Specified(#name)) c.name = absl::GetFlag(FLAGS_##name);
  HKV_SERVER_OPTIONS(HKV_OVERRIDE)
#undef HKV_OVERRIDE
  if (c.model.empty()) {
    c.model = DefaultModelPath();
    if (c.tokenizer.empty()) c.tokenizer = DefaultTokenizerPath();
  }
  if (RepeatedApiKeys().size() > 1) c.api_key = absl::StrJoin(RepeatedApiKeys(), ",");
  absl::Status valid = ValidateServerConfig(c);
  if (!valid.ok()) return valid;
  // Logging is configured before anything logs (flags are parsed only here).
  SetMinLogSeverity(*ParseLogSeverity(c.log_level));
  SetLogFormat(*ParseLogFormat(c.log_format));
  return c;
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError("--prompt-ids: '" + std::string(part) +
                                        "' is not an integer");
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids is empty");
  return ids;
}

int Fail(const absl::Status& s, const char* command) {
  std::cerr << "hkv " << command << ": " << s.message() << "\n";
  return 1;
}

int Generate() {
  auto config = ConfigFromFlags();
  if (!config.ok()) return Fail(config.status(), "generate");
  GenerateOptions o;
  o.server = *config;
  o.prompt = absl::GetFlag(FLAGS_prompt);
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    auto ids = ParseIds(absl::GetFlag(FLAGS_prompt_ids));
    if (!ids.ok()) return Fail(ids.status(), "generate");
    o.prompt_ids = *ids;
    o.use_prompt_ids = true;
  }
  o.sampling.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (Specified("temperature")) {
    o.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  }
  if (Specified("top_k")) o.top_k = absl::GetFlag(FLAGS_top_k);
  if (Specified("top_p")) o.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  o.chat = absl::GetFlag(FLAGS_chat);
  if (Specified("seed")) o.seed = absl::GetFlag(FLAGS_seed);
  o.sampling.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  o.kv_policy = absl::GetFlag(FLAGS_kv_policy);
  o.kv_budget = absl::GetFlag(FLAGS_kv_budget);
  o.beta = absl::GetFlag(FLAGS_beta);
  o.json = absl::GetFlag(FLAGS_json);
  return RunGenerate(o);
}

int Serve() {
  auto config = ConfigFromFlags();
  if (!config.ok()) return Fail(config.status(), "serve");
  if (absl::GetFlag(FLAGS_print_config)) {
    std::cout << ServerConfigToJson(*config) << "\n";
    return 0;
  }
  // Multi-node: the node's place comes from flags or LeaderWorkerSet's environment.
  auto layout = ResolveDistLayout(absl::GetFlag(FLAGS_dist_addr), absl::GetFlag(FLAGS_world_size),
                                  absl::GetFlag(FLAGS_rank));
  if (!layout.ok()) return Fail(layout.status(), "serve");
  layout->token = absl::GetFlag(FLAGS_dist_token);
  if (layout->token.empty() && std::getenv("HKV_DIST_TOKEN") != nullptr) {
    layout->token = std::getenv("HKV_DIST_TOKEN");
  }
  if (layout->world_size > 1 && layout->rank > 0) return RunFollower(*config, *layout);
  return RunServe(*config, *layout);
}

int HeadkvPlan() {
  HeadkvPlanOptions o;
  o.scores = absl::GetFlag(FLAGS_scores);
  o.budget = absl::GetFlag(FLAGS_budget);
  o.beta = absl::GetFlag(FLAGS_beta);
  o.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.granularity = absl::GetFlag(FLAGS_granularity);
  o.json = absl::GetFlag(FLAGS_json);
  return RunHeadkvPlan(o);
}

// Parses a comma-separated list of numbers for `flag`.
template <typename T>
absl::StatusOr<std::vector<T>> ParseList(const std::string& text, const char* flag) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    T value;
    bool ok;
    if constexpr (std::is_floating_point_v<T>) {
      ok = absl::SimpleAtod(part, &value);
    } else {
      ok = absl::SimpleAtoi(part, &value);
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": '", part, "' is not a number"));
    }
    out.push_back(value);
  }
  return out;
}

int HeadkvScore() {
  auto config = ConfigFromFlags();
  if (!config.ok()) return Fail(config.status(), "headkv-score");
  HeadkvScoreOptions o;
  o.server = *config;
  o.probes = absl::GetFlag(FLAGS_probes);
  o.haystack = absl::GetFlag(FLAGS_haystack);
  o.needles = absl::GetFlag(FLAGS_needles);
  auto lengths = ParseList<int64_t>(absl::GetFlag(FLAGS_context_lengths), "--context-lengths");
  if (!lengths.ok()) return Fail(lengths.status(), "headkv-score");
  auto depths = ParseList<double>(absl::GetFlag(FLAGS_depths), "--depths");
  if (!depths.ok()) return Fail(depths.status(), "headkv-score");
  o.context_lengths = *lengths;
  o.depths = *depths;
  o.method = absl::GetFlag(FLAGS_method);
  o.out = absl::GetFlag(FLAGS_out);
  o.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  o.json = absl::GetFlag(FLAGS_json);
  return RunHeadkvScore(o);
}

int BenchServe() {
  BenchServeOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  o.num_requests = absl::GetFlag(FLAGS_num_requests);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.request_rate = absl::GetFlag(FLAGS_request_rate);
  o.input_len = absl::GetFlag(FLAGS_input_len);
  o.output_len = absl::GetFlag(FLAGS_output_len);
  o.prompts_file = absl::GetFlag(FLAGS_prompts_file);
  o.range_ratio = absl::GetFlag(FLAGS_range_ratio);
  o.kv_policy = Specified("kv_policy") ? absl::GetFlag(FLAGS_kv_policy) : "";
  o.kv_budget = Specified("kv_budget") ? absl::GetFlag(FLAGS_kv_budget) : 0;
  o.seed = absl::GetFlag(FLAGS_seed);
  o.slo_ttft_ms = absl::GetFlag(FLAGS_slo_ttft_ms);
  o.slo_tpot_ms = absl::GetFlag(FLAGS_slo_tpot_ms);
  o.json = absl::GetFlag(FLAGS_json);
  o.json_out = absl::GetFlag(FLAGS_json_out);
  o.backend = absl::GetFlag(FLAGS_backend);
  o.token_times_out = absl::GetFlag(FLAGS_token_times_out);
  return RunBenchServe(o);
}

int Eval() {
  auto config = ConfigFromFlags();
  if (!config.ok()) return Fail(config.status(), "eval");
  EvalOptions o;
  o.server = *config;
  o.tasks = absl::GetFlag(FLAGS_tasks);
  if (o.tasks.empty()) return Fail(absl::InvalidArgumentError("--tasks FILE is required"), "eval");
  o.policies = absl::StrSplit(absl::GetFlag(FLAGS_policies), ',', absl::SkipWhitespace());
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_budgets), ',', absl::SkipWhitespace())) {
    int32_t b;
    if (!absl::SimpleAtoi(part, &b)) {
      return Fail(
          absl::InvalidArgumentError(absl::StrCat("--budgets: '", part, "' is not an integer")),
          "eval");
    }
    o.budgets.push_back(b);
  }
  o.beta = absl::GetFlag(FLAGS_beta);
  if (const int32_t n = absl::GetFlag(FLAGS_max_new_tokens); n != 0) o.max_new_tokens = n;
  o.answer_stop = absl::GetFlag(FLAGS_answer_stop);
  o.json = absl::GetFlag(FLAGS_json);
  return RunEval(o);
}

// Splits a space-separated list of flag names.
std::vector<std::string> Names(absl::string_view list) {
  return absl::StrSplit(list, ' ', absl::SkipEmpty());
}

// The commands and the flags each reads; their help text comes from the registrations above.
std::vector<CommandSpec> Commands() {
  // The model and engine: read by generate and serve (ConfigFromFlags).
  const std::vector<std::string> engine = Names(
      "config model tokenizer dummy_weights device max_model_len cuda_graph_max_batch "
      "num_threads kv_pool_blocks kv_pool_gb gpu_memory_utilization block_size max_batch_tokens "
      "max_step_ms max_prefill_share max_seqs tensor_parallel_size tp_head_placement head_scores "
      "chat_template page_table_deltas async_scheduling");
  std::vector<std::string> generate = engine;
  for (std::string& name : Names("prompt prompt_ids chat max_tokens temperature top_k top_p "
                                 "seed ignore_eos kv_policy kv_budget beta json")) {
    generate.push_back(std::move(name));
  }
  const std::vector<std::string> headkv_plan =
      Names("scores budget beta kv_heads granularity json");
  std::vector<std::string> headkv_score = engine;
  for (std::string& name : Names("probes haystack needles context_lengths depths method out "
                                 "max_new_tokens json")) {
    headkv_score.push_back(std::move(name));
  }
  const std::vector<std::string> bench_serve = Names(
      "target num_requests concurrency request_rate input_len output_len range_ratio "
      "prompts_file kv_policy kv_budget seed slo_ttft_ms slo_tpot_ms json json_out backend "
      "token_times_out");
  std::vector<std::string> eval = engine;
  for (std::string& name : Names("tasks policies budgets beta max_new_tokens answer_stop json")) {
    eval.push_back(std::move(name));
  }
  // serve reads the whole server config: the engine flags and every flag of this file that no
  // other command claims, so that a new server option shows in `hkv serve --help` by itself.
  std::vector<std::string> serve = engine;
  for (const std::string& flag : FlagsDefinedBeside("model")) {
    const auto claimed = [&flag](const std::vector<std::string>& list) {
      return std::find(list.begin(), list.end(), flag) != list.end();
    };
    if (!claimed(generate) && !claimed(headkv_plan) && !claimed(headkv_score) &&
        !claimed(bench_serve) && !claimed(eval)) {
      serve.push_back(flag);
    }
  }
  return {
      {"generate", "[--model PATH] [--prompt TEXT | --prompt-ids 1,2,3] [flags]",
       "Runs one prompt through the engine and prints the text (or one JSON object).", generate,
       &Generate},
      {"serve", "[--config FILE] [--model PATH] [--port 50051] [flags]",
       "Serves the hkv.v1.Generation gRPC API, the OpenAI-compatible HTTP API (--http-port), "
       "gRPC health and /metrics until SIGTERM.",
       serve, &Serve},
      {"headkv-plan", "--scores FILE --budget B [flags]",
       "Prints the HeadKV per-head budgets of a score file.", headkv_plan, &HeadkvPlan},
      {"headkv-score", "--probes FILE | --haystack FILE --needles FILE, --out FILE [flags]",
       "Estimates HeadKV head scores (R2 or R) from needle probes; writes the score file.",
       headkv_score, &HeadkvScore},
      {"bench-serve",
       "[--target HOST:PORT] [--num-requests N] [--concurrency C | --request-rate R]",
       "Load-tests a running server: throughput and TTFT / TPOT / ITL / e2e percentiles.",
       bench_serve, &BenchServe},
      {"eval", "--model DIR --tasks FILE [--policies P,..] [--budgets B,..] [flags]",
       "Scores every question of a tasks file per KV policy and budget (accuracy vs KV kept).",
       eval, &Eval},
  };
}

// Runs the command named by the positional arguments (positional[0] is the program), or prints
// help: to stdout with exit 0 when asked for, to stderr with exit 2 for a bad command line.
int Dispatch(absl::Span<const CommandSpec> commands, const std::vector<char*>& positional,
             bool help) {
  std::vector<std::string> words(positional.begin() + 1, positional.end());
  if (!words.empty() && words[0] == "help") {
    help = true;
    words.erase(words.begin());
  }
  if (words.empty()) {
    (help ? std::cout : std::cerr) << ProgramHelp(commands);
    return help ? 0 : 2;
  }
  const CommandSpec* command = FindCommand(commands, words[0]);
  if (command == nullptr) {
    std::cerr << "hkv: unknown command '" << words[0] << "'\n\n" << ProgramHelp(commands);
    return 2;
  }
  if (words.size() > 1) {
    std::cerr << "hkv " << command->name << ": unexpected argument '" << words[1]
              << "' (flags start with --; see hkv " << command->name << " --help)\n";
    return 2;
  }
  if (help) {
    std::cout << CommandHelp(*command);
    return 0;
  }
  return command->run();
}

}  // namespace
}  // namespace hkv

int main(int argc, char** argv) {
  hkv::TuneMallocForLargeStepBuffers();
  // Accept --kebab-case spellings of every flag (absl flags use snake_case).
  std::vector<std::string> args(argv, argv + argc);
  for (std::string& a : args) {
    if (a.rfind("--", 0) != 0) continue;
    const size_t end = std::min(a.find('='), a.size());
    for (size_t i = 2; i < end; ++i) {
      if (a[i] == '-') a[i] = '_';
    }
    std::string name = a.substr(2, end - 2);
    hkv::SpecifiedFlags().insert(name);
    if (name == "api_key") {
      const size_t i = &a - args.data();
      if (end < a.size()) {
        hkv::RepeatedApiKeys().push_back(a.substr(end + 1));
      } else if (i + 1 < args.size()) {
        hkv::RepeatedApiKeys().push_back(args[i + 1]);
      }
    }
    if (name.rfind("no", 0) == 0) hkv::SpecifiedFlags().insert(name.substr(2));
  }
  // NOTE(newcomer): absl's --help lists only flags of files named after the program (none here:
  // they live in main.cc) and knows no subcommands, so hkv answers --help itself.
  const bool help = hkv::TakeHelpFlags(&args);
  std::vector<char*> argv2;
  for (std::string& a : args) argv2.push_back(a.data());
  const std::vector<hkv::CommandSpec> commands = hkv::Commands();
  absl::SetProgramUsageMessage(hkv::ProgramHelp(commands));
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(argv2.size()), argv2.data());
  return hkv::Dispatch(commands, positional, help);
}
