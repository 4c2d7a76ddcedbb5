// `hkv bench-serve`: a gRPC load generator in the style of `vllm bench serve`. Sends N
// streamed Generate requests to a server (or, with --backend openai, streamed POST
// /v1/completions to an OpenAI-compatible HTTP API), closed-loop at a concurrency or open-loop at a
// Poisson rate, and reports throughput and TTFT / TPOT / ITL / e2e percentiles (p50 to p99.9
// and the max: a stream's worst inter-token gap is the ITL max) as a table (and JSON), and,
// with --token-times-out, every token's arrival time for windowed analyses
// (bench/gpu_long_prompt_bench.sh). Runs its own client threads; talks only to the target.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "hkv/v1/generation.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "server/bench_openai_client.h"
#include "server/commands.h"

namespace hkv {
namespace {

struct RequestRecord {
  bool ok = false;
  std::string error;
  int32_t prompt_tokens = 0;
  int32_t output_tokens = 0;
  double ttft_s = 0;
  double e2e_s = 0;
  absl::Time first_token = absl::InfiniteFuture(), end = absl::InfinitePast();
  absl::Time start = absl::InfinitePast();
  std::vector<double> itl_s;
  std::vector<absl::Time> token_times;  // Arrival of each response carrying tokens.
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

RequestRecord RunOne(hkv::v1::Generation::Stub* stub, const hkv::v1::GenerateRequest& request) {
  RequestRecord rec;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(30));
  const absl::Time start = absl::Now();
  rec.start = start;
  absl::Time last = start;
  auto reader = stub->Generate(&context, request);
  hkv::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    const absl::Time now = absl::Now();
    if (response.token_ids_size() > 0) {
      if (rec.output_tokens == 0) {
        rec.ttft_s = absl::ToDoubleSeconds(now - start);
        rec.first_token = now;
      } else {
        rec.itl_s.push_back(absl::ToDoubleSeconds(now - last));
      }
      rec.output_tokens += response.token_ids_size();
      rec.token_times.push_back(now);
      last = now;
    }
    if (response.has_usage()) rec.prompt_tokens = response.usage().prompt_tokens();
  }
  grpc::Status status = reader->Finish();
  rec.end = absl::Now();
  rec.e2e_s = absl::ToDoubleSeconds(rec.end - start);
  rec.ok = status.ok();
  if (!status.ok()) rec.error = status.error_message();
  return rec;
}

// The same request as an OpenAI completions body (streamed, with usage).
std::string OpenAiBody(const BenchServeOptions& o, const hkv::v1::GenerateRequest& request) {
  nlohmann::json j = {{"max_tokens", request.sampling().max_tokens()},
                      {"ignore_eos", true},
                      {"temperature", 0},
                      {"stream", true},
                      {"stream_options", {{"include_usage", true}}}};
  if (!o.served_model.empty()) j["model"] = o.served_model;
  if (request.has_prompt_token_ids()) {
    j["prompt"] = std::vector<int32_t>(request.prompt_token_ids().ids().begin(),
                                       request.prompt_token_ids().ids().end());
  } else {
    j["prompt"] = request.prompt();
  }
  if (request.has_kv_policy()) {
    j["kv_policy"] = {{"name", request.kv_policy().name()},
                      {"budget", request.kv_policy().budget()}};
  }
  return j.dump();
}

// HOST:PORT split at the last colon (port 0 when there is none).
std::pair<std::string, int> SplitTarget(const std::string& target) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos) return {target, 0};
  return {target.substr(0, colon), std::atoi(target.c_str() + colon + 1)};
}

RequestRecord RunOneOpenAi(const BenchServeOptions& o, const hkv::v1::GenerateRequest& request) {
  const auto [host, port] = SplitTarget(o.target);
  const OpenAiBenchResult r = RunOpenAiCompletion(host, port, OpenAiBody(o, request));
  RequestRecord rec;
  rec.ok = r.ok;
  rec.error = r.error;
  rec.prompt_tokens = r.prompt_tokens;
  rec.output_tokens = r.output_tokens;
  rec.start = r.start;
  rec.end = r.end;
  rec.e2e_s = absl::ToDoubleSeconds(r.end - r.start);
  rec.token_times = r.text_chunks;
  if (!r.text_chunks.empty()) {
    rec.first_token = r.text_chunks[0];
    rec.ttft_s = absl::ToDoubleSeconds(r.text_chunks[0] - r.start);
    for (size_t i = 1; i < r.text_chunks.size(); ++i) {
      rec.itl_s.push_back(absl::ToDoubleSeconds(r.text_chunks[i] - r.text_chunks[i - 1]));
    }
  }
  if (rec.ok && rec.output_tokens == 0) {
    rec.ok = false;
    rec.error = "the stream carried no usage (stream_options.include_usage)";
  }
  return rec;
}

RequestRecord Run(const BenchServeOptions& o, hkv::v1::Generation::Stub* stub,
                  const hkv::v1::GenerateRequest& request) {
  return o.backend == "openai" ? RunOneOpenAi(o, request) : RunOne(stub, request);
}

// vLLM's `bench serve` result keys beside ours, so that the JSON reads like vLLM's:
// mean_/median_/std_/p99_ of each latency (ms).
void AddVllmStats(const char* name, const std::vector<double>& v, nlohmann::ordered_json* j) {
  double mean = 0, var = 0;
  for (double x : v) mean += x;
  mean = v.empty() ? 0 : mean / v.size();
  for (double x : v) var += (x - mean) * (x - mean);
  (*j)[absl::StrFormat("mean_%s_ms", name)] = mean;
  (*j)[absl::StrFormat("median_%s_ms", name)] = Percentile(v, 50);
  (*j)[absl::StrFormat("std_%s_ms", name)] = v.empty() ? 0 : std::sqrt(var / v.size());
  (*j)[absl::StrFormat("p99_%s_ms", name)] = Percentile(v, 99);
}

// A length drawn uniformly from [n (1 - ratio), n (1 + ratio)], at least 1 (vLLM's random
// dataset range ratio; ratio 0 gives n).
int32_t Jitter(int32_t n, double ratio, std::mt19937_64& rng) {
  if (ratio <= 0) return n;
  std::uniform_int_distribution<int32_t> d(std::max(1, static_cast<int32_t>(n * (1 - ratio))),
                                           std::max(1, static_cast<int32_t>(n * (1 + ratio))));
  return d(rng);
}

// Most requests streaming tokens at once (between their first token and their end): the
// sequences the server actually decoded together.
int32_t MaxConcurrentStreams(const std::vector<RequestRecord>& records) {
  std::vector<std::pair<absl::Time, int>> events;
  for (const RequestRecord& r : records) {
    if (r.output_tokens == 0) continue;
    events.push_back({r.first_token, +1});
    events.push_back({r.end, -1});
  }
  std::sort(events.begin(), events.end(), [](const auto& a, const auto& b) {
    return a.first < b.first || (a.first == b.first && a.second < b.second);
  });
  int32_t now = 0, best = 0;
  for (const auto& [t, d] : events) best = std::max(best, now += d);
  return best;
}

std::vector<hkv::v1::GenerateRequest> MakeRequests(const BenchServeOptions& o, int32_t vocab) {
  std::vector<std::string> prompts;
  if (!o.prompts_file.empty()) {
    std::ifstream in(o.prompts_file);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) prompts.push_back(line);
    }
  }
  std::mt19937_64 rng(o.seed);
  std::vector<hkv::v1::GenerateRequest> out(o.num_requests);
  for (int32_t i = 0; i < o.num_requests; ++i) {
    auto& r = out[i];
    if (!prompts.empty()) {
      r.set_prompt(prompts[i % prompts.size()]);
    } else {
      // Synthetic ids from [3, vocab): avoids BOS/EOS/special ids of small vocabularies.
      std::uniform_int_distribution<int32_t> token(3, std::max(4, vocab) - 1);
      auto* ids = r.mutable_prompt_token_ids();
      ids->add_ids(1);
      for (int32_t t = 1; t < Jitter(o.input_len, o.range_ratio, rng); ++t) {
        ids->add_ids(token(rng));
      }
    }
    r.mutable_sampling()->set_max_tokens(Jitter(o.output_len, o.range_ratio, rng));
    r.mutable_sampling()->set_ignore_eos(true);
    if (!o.kv_policy.empty()) r.mutable_kv_policy()->set_name(o.kv_policy);
    if (o.kv_budget > 0) r.mutable_kv_policy()->set_budget(o.kv_budget);
  }
  return out;
}

// Sends every request, `o.concurrency` at a time (closed loop) or at Poisson arrival times of
// `o.request_rate` (open loop); returns one record per request, in order.
std::vector<RequestRecord> SendAll(hkv::v1::Generation::Stub* stub,
                                   const std::vector<hkv::v1::GenerateRequest>& requests,
                                   const BenchServeOptions& o, absl::Time start) {
  std::vector<RequestRecord> records(requests.size());
  std::atomic<int32_t> next{0};
  std::vector<std::thread> threads;
  if (o.request_rate > 0) {
    // Open loop: one thread per request, released at Poisson arrival times.
    std::mt19937_64 rng(o.seed + 1);
    std::exponential_distribution<double> gap(o.request_rate);
    double t = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
      const absl::Time at = start + absl::Seconds(t);
      threads.emplace_back([&, i, at] {
        absl::SleepFor(at - absl::Now());
        records[i] = Run(o, stub, requests[i]);
      });
      t += gap(rng);
    }
  } else {
    for (int32_t c = 0; c < o.concurrency; ++c) {
      threads.emplace_back([&] {
        for (int32_t i = next++; i < static_cast<int32_t>(requests.size()); i = next++) {
          records[i] = Run(o, stub, requests[i]);
        }
      });
    }
  }
  for (auto& t : threads) t.join();
  return records;
}

// The report: counts, throughputs and latency percentiles (ms) of the successful requests.
nlohmann::ordered_json Summarize(const BenchServeOptions& o,
                                 const std::vector<RequestRecord>& records, double duration) {
  std::vector<double> ttft, tpot, itl, e2e;
  int64_t out_tokens = 0, in_tokens = 0;
  int32_t ok = 0, good = 0;
  std::string first_error;
  for (const RequestRecord& r : records) {
    if (!r.ok) {
      if (first_error.empty()) first_error = r.error;
      continue;
    }
    ++ok;
    out_tokens += r.output_tokens;
    in_tokens += r.prompt_tokens;
    ttft.push_back(r.ttft_s * 1e3);
    e2e.push_back(r.e2e_s * 1e3);
    const double r_tpot =
        r.output_tokens > 1 ? (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) * 1e3 : 0;
    tpot.push_back(r_tpot);
    for (double x : r.itl_s) itl.push_back(x * 1e3);
    const bool meets = (o.slo_ttft_ms <= 0 || r.ttft_s * 1e3 <= o.slo_ttft_ms) &&
                       (o.slo_tpot_ms <= 0 || r_tpot <= o.slo_tpot_ms);
    if (meets) ++good;
  }
  nlohmann::ordered_json j;
  j["target"] = o.target;
  j["mode"] = o.request_rate > 0 ? "rate" : "concurrency";
  j["concurrency"] = o.concurrency;
  j["request_rate"] = o.request_rate;
  j["num_requests"] = o.num_requests;
  j["successful_requests"] = ok;
  j["duration_s"] = duration;
  j["input_tokens"] = in_tokens;
  j["output_tokens"] = out_tokens;
  j["request_throughput"] = ok / duration;
  j["output_throughput"] = out_tokens / duration;
  j["goodput"] = good / duration;
  j["max_concurrent_streams"] = MaxConcurrentStreams(records);
  for (auto& [name, values] : {std::pair<const char*, std::vector<double>*>{"ttft_ms", &ttft},
                               {"tpot_ms", &tpot},
                               {"itl_ms", &itl},
                               {"e2e_ms", &e2e}}) {
    double mean = 0;
    for (double x : *values) mean += x;
    j[name] = {{"mean", values->empty() ? 0 : mean / values->size()},
               {"p50", Percentile(*values, 50)},
               {"p90", Percentile(*values, 90)},
               {"p99", Percentile(*values, 99)},
               {"p99.9", Percentile(*values, 99.9)},
               {"max", Percentile(*values, 100)}};
  }
  j["backend"] = o.backend;
  j["completed"] = ok;
  j["failed"] = static_cast<int32_t>(records.size()) - ok;
  j["duration"] = duration;
  j["total_input_tokens"] = in_tokens;
  j["total_output_tokens"] = out_tokens;
  j["total_token_throughput"] = (in_tokens + out_tokens) / duration;
  AddVllmStats("ttft", ttft, &j);
  AddVllmStats("tpot", tpot, &j);
  AddVllmStats("itl", itl, &j);
  AddVllmStats("e2el", e2e, &j);
  if (!first_error.empty()) j["first_error"] = first_error;
  return j;
}

// One JSON line per successful request: its send time and each token's arrival, in Unix
// seconds (so runs of several processes on one host share a clock).
void WriteTokenTimes(const std::string& path, const std::vector<RequestRecord>& records) {
  std::ofstream out(path);
  auto unix_s = [](absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); };
  for (const RequestRecord& r : records) {
    if (!r.ok) continue;
    nlohmann::json line;
    line["start_s"] = unix_s(r.start);
    std::vector<double> times;
    times.reserve(r.token_times.size());
    for (absl::Time t : r.token_times) times.push_back(unix_s(t));
    line["token_s"] = std::move(times);
    out << line.dump() << "\n";
  }
}

// Prints the report as a table.
void PrintTable(const BenchServeOptions& o, const hkv::v1::ModelInfo& info,
                const nlohmann::ordered_json& j) {
  const int32_t ok = j["successful_requests"].get<int32_t>();
  const double duration = j["duration_s"].get<double>();
  const int64_t in_tokens = j["input_tokens"].get<int64_t>();
  const int64_t out_tokens = j["output_tokens"].get<int64_t>();
  std::cout << absl::StrFormat(
      "============ hkv bench-serve ============\n"
      "target                    %s (%s, %s)\n"
      "requests ok / sent        %d / %d\n"
      "duration (s)              %.2f\n"
      "input / output tokens     %d / %d\n"
      "request throughput (r/s)  %.2f\n"
      "output throughput (tok/s) %.1f\n"
      "goodput (r/s)             %.2f\n"
      "max concurrent streams    %d\n",
      o.target, info.model_name(), info.device(), ok, o.num_requests, duration, in_tokens,
      out_tokens, j["request_throughput"].get<double>(), j["output_throughput"].get<double>(),
      j["goodput"].get<double>(), j["max_concurrent_streams"].get<int32_t>());
  std::cout << absl::StrFormat("%-10s %10s %10s %10s %10s %10s %10s\n", "ms", "mean", "p50", "p90",
                               "p99", "p99.9", "max");
  for (const char* name : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    const nlohmann::ordered_json& m = j[name];
    std::cout << absl::StrFormat("%-10s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", name,
                                 m["mean"].get<double>(), m["p50"].get<double>(),
                                 m["p90"].get<double>(), m["p99"].get<double>(),
                                 m["p99.9"].get<double>(), m["max"].get<double>());
  }
  if (j.contains("first_error")) {
    std::cout << "first error: " << j["first_error"].get<std::string>() << "\n";
  }
}

// Sends the requests and prints (and writes) the report; 0 when every request succeeded.
int RunAndReport(const BenchServeOptions& o, const hkv::v1::ModelInfo& info,
                 hkv::v1::Generation::Stub* stub) {
  const auto requests = MakeRequests(o, info.vocab_size());
  const absl::Time start = absl::Now();
  const std::vector<RequestRecord> records = SendAll(stub, requests, o, start);
  const absl::Time end = absl::Now();
  const double duration = absl::ToDoubleSeconds(end - start);
  nlohmann::ordered_json j = Summarize(o, records, duration);
  j["start_unix_s"] = absl::ToDoubleSeconds(start - absl::UnixEpoch());
  j["end_unix_s"] = absl::ToDoubleSeconds(end - absl::UnixEpoch());
  if (!o.token_times_out.empty()) WriteTokenTimes(o.token_times_out, records);
  if (!o.json_out.empty()) std::ofstream(o.json_out) << j.dump(2) << "\n";
  if (o.json) {
    std::cout << j.dump(2) << "\n";
  } else {
    PrintTable(o, info, j);
  }
  return j["successful_requests"].get<int32_t>() == o.num_requests ? 0 : 2;
}

// --backend openai: the model id and context from GET /v1/models, then the same load over
// streamed completions. Synthetic prompts draw ids below 512 (the API does not say the
// vocabulary's size; every served tokenizer has at least that many).
int RunOpenAiBench(const BenchServeOptions& options) {
  BenchServeOptions o = options;
  const auto [host, port] = SplitTarget(o.target);
  const std::string models = FetchOpenAiModels(host, port);
  const nlohmann::json j = nlohmann::json::parse(models, nullptr, false);
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id") || !j["data"][0]["id"].is_string()) {
    std::cerr << "hkv bench-serve: cannot list the models of http://" << o.target
              << "/v1/models: " << models.substr(0, 512) << "\n";
    return 1;
  }
  if (o.served_model.empty()) o.served_model = j["data"][0]["id"].get<std::string>();
  hkv::v1::ModelInfo info;
  info.set_model_name(o.served_model);
  info.set_device("openai");
  info.set_vocab_size(512);
  return RunAndReport(o, info, nullptr);
}

}  // namespace

int RunBenchServe(const BenchServeOptions& o) {
  if (o.num_requests < 1 || o.concurrency < 1 || o.input_len < 1 || o.output_len < 1 ||
      o.range_ratio < 0 || o.range_ratio >= 1) {
    std::cerr << "hkv bench-serve: --num-requests, --concurrency, --input-len and --output-len "
                 "must be >= 1 and --range-ratio in [0, 1)\n";
    return 1;
  }
  if (o.backend == "openai") return RunOpenAiBench(o);
  if (o.backend != "hkv") {
    std::cerr << "hkv bench-serve: --backend must be hkv or openai, got " << o.backend << "\n";
    return 1;
  }
  auto channel = grpc::CreateChannel(o.target, grpc::InsecureChannelCredentials());
  auto stub = hkv::v1::Generation::NewStub(channel);
  hkv::v1::ModelInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status s = stub->GetModelInfo(&context, hkv::v1::GetModelInfoRequest(), &info);
    if (!s.ok()) {
      std::cerr << "hkv bench-serve: cannot reach " << o.target << ": " << s.error_message()
                << "\n";
      return 1;
    }
  }
  return RunAndReport(o, info, stub.get());
}

}  // namespace hkv
