#include "server/headkv_probe_runner.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/batch.h"
#include "common/status_macros.h"
#include "headkv/answer_metrics.h"

namespace hkv {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One probe of the batch being run: its blocks, progress and scorer.
struct LiveProbe {
  const PreparedProbe* probe = nullptr;
  ProbeOutcome* out = nullptr;
  int64_t first_block = 0;  // Rows (layer, kv_head) own [first + r * per_row, ... + per_row).
  int32_t blocks_per_row = 0;
  int32_t pos = 0;  // Tokens whose K/V are cached.
  bool done = false;
  std::unique_ptr<R2ProbeScorer> r2;
  std::unique_ptr<RProbeScorer> r;
};

// Tokens the probe's KV holds at most: the prompt and every generated token but the last.
int64_t ProbeTokens(const PreparedProbe& p) {
  return static_cast<int64_t>(p.prompt.size()) + p.max_new_tokens;
}

int64_t ProbeBlocks(const PreparedProbe& p, const ModelConfig& c, int32_t block_size) {
  return int64_t{c.num_layers} * c.num_kv_heads * CeilDiv(ProbeTokens(p), block_size);
}

// Appends probe `lp`'s step of `tokens` at lp.pos (plain rows growing by tokens.size()).
void AddStep(const ModelConfig& c, LiveProbe& lp, std::vector<TokenId> tokens, bool decode,
             int32_t top_n, Batch* b) {
  SequenceStep s;
  s.id = static_cast<RequestId>(b->seqs.size());
  s.start_pos = lp.pos;
  s.tokens = std::move(tokens);
  s.sample = decode;
  s.sample_step = static_cast<int32_t>(lp.out->output.size());
  if (decode) {
    s.probe_top_n = top_n;
    s.probe_prompt_len = static_cast<int32_t>(lp.probe->prompt.size());
  }
  const int32_t after = lp.pos + static_cast<int32_t>(s.tokens.size());
  const int32_t rows = c.num_layers * c.num_kv_heads;
  for (int32_t r = 0; r < rows; ++r) {
    const int64_t first = lp.first_block + int64_t{r} * lp.blocks_per_row;
    for (int64_t k = 0; k < CeilDiv(after, b->block_size); ++k) {
      b->kv_indices.push_back(static_cast<BlockId>(first + k));
    }
    b->kv_indptr.push_back(static_cast<int32_t>(b->kv_indices.size()));
    b->kv_len_before.push_back(lp.pos);
    b->kv_len_after.push_back(after);
  }
  lp.pos = after;
  b->seqs.push_back(std::move(s));
}

Batch EmptyBatch(const ModelConfig& c, int32_t block_size) {
  Batch b;
  b.num_layers = c.num_layers;
  b.num_kv_heads = c.num_kv_heads;
  b.block_size = block_size;
  b.kv_indptr = {0};
  return b;
}

// Whether generation stops after `token`: EOS, a newline in its text, or the length limit.
bool Stops(const Tokenizer& tok, const LiveProbe& lp, TokenId token) {
  const std::vector<TokenId> eos = tok.eos_ids();
  if (std::find(eos.begin(), eos.end(), token) != eos.end()) return true;
  const std::vector<TokenId>& out = lp.out->output;
  const TokenId prev = out.size() >= 2 ? out[out.size() - 2] : lp.probe->prompt.back();
  if (tok.TokenBytes(prev, token).find('\n') != std::string::npos) return true;
  return static_cast<int32_t>(out.size()) >= lp.probe->max_new_tokens;
}

// Adds one decode step's probe to the probe's scorer.
absl::Status Score(const ModelConfig& c, LiveProbe& lp, const SequenceResult& r) {
  const size_t per_layer = r.probe_positions.size() / c.num_layers;
  if (per_layer == 0 || r.probe_weights.size() != r.probe_positions.size()) {
    return absl::InternalError("the worker returned no attention probe");
  }
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const auto pos = absl::MakeConstSpan(r.probe_positions).subspan(l * per_layer, per_layer);
    const auto w = absl::MakeConstSpan(r.probe_weights).subspan(l * per_layer, per_layer);
    HKV_RETURN_IF_ERROR(lp.r2 != nullptr ? lp.r2->AddTopN(l, pos, w)
                                         : lp.r->AddTopN(l, pos, w, r.token));
  }
  return absl::OkStatus();
}

// Prefills every probe of `live` but its last prompt token, several probes per step.
absl::Status Prefill(Worker* worker, const ProbeRunOptions& o, std::vector<LiveProbe>& live) {
  const ModelConfig& c = worker->config();
  while (true) {
    Batch b = EmptyBatch(c, o.block_size);
    int32_t budget = o.max_step_tokens;
    for (LiveProbe& lp : live) {
      const int32_t target = static_cast<int32_t>(lp.probe->prompt.size()) - 1;
      const int32_t chunk = std::min(target - lp.pos, budget);
      if (chunk <= 0) continue;
      const auto begin = lp.probe->prompt.begin() + lp.pos;
      AddStep(c, lp, std::vector<TokenId>(begin, begin + chunk), /*decode=*/false, 0, &b);
      budget -= chunk;
      if (budget == 0) break;
    }
    if (b.seqs.empty()) return absl::OkStatus();
    HKV_RETURN_IF_ERROR(worker->Execute(b).status());
  }
}

// Decodes every probe of `live` greedily until it stops, scoring every step.
absl::Status Decode(Worker* worker, const Tokenizer& tok, const ProbeRunOptions& o,
                    std::vector<LiveProbe>& live) {
  const ModelConfig& c = worker->config();
  while (true) {
    Batch b = EmptyBatch(c, o.block_size);
    std::vector<LiveProbe*> in_step;
    for (LiveProbe& lp : live) {
      if (lp.done) continue;
      const std::vector<TokenId>& out = lp.out->output;
      const TokenId next = out.empty() ? lp.probe->prompt.back() : out.back();
      const int32_t top_n = o.method == ProbeMethod::kR2 ? lp.probe->span.size() : 1;
      AddStep(c, lp, {next}, /*decode=*/true, top_n, &b);
      in_step.push_back(&lp);
    }
    if (b.seqs.empty()) return absl::OkStatus();
    HKV_ASSIGN_OR_RETURN(BatchResult result, worker->Execute(b));
    if (result.seqs.size() != in_step.size()) {
      return absl::InternalError("the worker returned a result per sequence it did not run");
    }
    for (size_t i = 0; i < in_step.size(); ++i) {
      LiveProbe& lp = *in_step[i];
      const SequenceResult& r = result.seqs[i];
      HKV_RETURN_IF_ERROR(Score(c, lp, r));
      lp.out->output.push_back(r.token);
      lp.done = Stops(tok, lp, r.token);
    }
  }
}

// The response: the generated text up to the first newline, EOS tokens dropped.
std::string ResponseText(const Tokenizer& tok, const PreparedProbe& p,
                         const std::vector<TokenId>& output) {
  const std::vector<TokenId> eos = tok.eos_ids();
  std::vector<TokenId> kept;
  for (TokenId t : output) {
    if (std::find(eos.begin(), eos.end(), t) == eos.end()) kept.push_back(t);
  }
  std::string text = DecodeText(tok, kept, p.prompt.back());
  return text.substr(0, text.find('\n'));
}

// Runs probes [begin, end) together from block 0 of the pool and fills their outcomes.
absl::Status RunGroup(Worker* worker, const Tokenizer& tok, const ProbeRunOptions& o,
                      const std::vector<PreparedProbe>& probes, size_t begin, size_t end,
                      ProbeRunReport* report) {
  const ModelConfig& c = worker->config();
  std::vector<LiveProbe> live(end - begin);
  int64_t next_block = 0;
  for (size_t i = begin; i < end; ++i) {
    LiveProbe& lp = live[i - begin];
    lp.probe = &probes[i];
    lp.out = &report->probes[i];
    lp.out->id = probes[i].id;
    lp.first_block = next_block;
    lp.blocks_per_row = static_cast<int32_t>(CeilDiv(ProbeTokens(probes[i]), o.block_size));
    next_block += ProbeBlocks(probes[i], c, o.block_size);
    if (o.method == ProbeMethod::kR2) {
      lp.r2 = std::make_unique<R2ProbeScorer>(c.num_layers, c.num_heads, probes[i].span);
    } else {
      lp.r = std::make_unique<RProbeScorer>(c.num_layers, c.num_heads, probes[i].span,
                                            probes[i].prompt);
    }
  }
  HKV_RETURN_IF_ERROR(Prefill(worker, o, live));
  HKV_RETURN_IF_ERROR(Decode(worker, tok, o, live));
  for (LiveProbe& lp : live) {
    ProbeOutcome& out = *lp.out;
    out.response = ResponseText(tok, *lp.probe, out.output);
    out.metric = o.method == ProbeMethod::kR2 ? QaF1(out.response, lp.probe->answer)
                                              : Rouge1Recall(out.response, lp.probe->answer);
    out.accepted = out.metric > 0.5;
    out.scores = lp.r2 != nullptr ? lp.r2->scores() : lp.r->scores();
    report->num_accepted += out.accepted ? 1 : 0;
  }
  return absl::OkStatus();
}

// The byte offset where each token of `ids` starts in the decoded text, plus its end.
std::vector<int64_t> TokenOffsets(const Tokenizer& tok, const std::vector<TokenId>& ids,
                                  std::string* text) {
  std::vector<int64_t> offsets;
  offsets.reserve(ids.size() + 1);
  for (size_t i = 0; i < ids.size(); ++i) {
    offsets.push_back(static_cast<int64_t>(text->size()));
    if (i == 0 && ids[0] == tok.bos_id()) continue;  // BOS stands for no prompt bytes.
    text->append(tok.TokenBytes(i == 0 ? -1 : ids[i - 1], ids[i]));
  }
  offsets.push_back(static_cast<int64_t>(text->size()));
  return offsets;
}

}  // namespace

absl::StatusOr<PreparedProbe> PrepareProbe(const Probe& probe, const Tokenizer& tokenizer,
                                           int32_t max_new_tokens, int32_t max_seq_len) {
  auto bad = [&probe](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("probe ", probe.id, ": ", parts...));
  };
  PreparedProbe p;
  p.id = probe.id;
  p.answer = probe.answer;
  // The question ends what is prefilled: appended unless the prompt already ends with it (the
  // span lies before it either way).
  std::string prompt = probe.prompt;
  if (!probe.question.empty() &&
      !absl::EndsWith(absl::StripTrailingAsciiWhitespace(prompt), probe.question)) {
    absl::StrAppend(&prompt, " ", probe.question);
  }
  p.prompt = tokenizer.Encode(prompt, /*add_bos=*/true);
  std::string text;
  const std::vector<int64_t> offsets = TokenOffsets(tokenizer, p.prompt, &text);
  if (text != prompt) {
    return bad(
        "the tokenizer does not give back the prompt's bytes, so the answer's character "
        "span cannot be mapped to tokens");
  }
  // Tokens overlapping [span_begin, span_end): the first ending after the begin through the
  // last starting before the end.
  const int32_t n = static_cast<int32_t>(p.prompt.size());
  int32_t first = 0, last = n - 1;
  while (first < n && offsets[first + 1] <= probe.span_begin) ++first;
  while (last > first && offsets[last] >= probe.span_end) --last;
  p.span = {first, last + 1};
  if (p.span.size() > kMaxProbeTopN) {
    return bad("the answer span covers ", p.span.size(), " tokens; at most ", kMaxProbeTopN);
  }
  p.max_new_tokens = max_new_tokens > 0
                         ? max_new_tokens
                         : std::max<int32_t>(1, tokenizer.Encode(" " + probe.answer, false).size());
  if (int64_t{n} + p.max_new_tokens > max_seq_len) {
    return bad(n, " prompt tokens + ", p.max_new_tokens, " new tokens exceed the model's context ",
               "length ", max_seq_len);
  }
  return p;
}

absl::StatusOr<ProbeRunReport> RunProbes(Worker* worker, const Tokenizer& tokenizer,
                                         const std::vector<PreparedProbe>& probes,
                                         const ProbeRunOptions& options) {
  const ModelConfig& c = worker->config();
  HKV_ASSIGN_OR_RETURN(const KvCapacity capacity, worker->ReportKvCapacity());
  int64_t limit = capacity.max_blocks;
  if (options.max_pool_blocks > 0) limit = std::min(limit, options.max_pool_blocks);
  // The pool: the max_seqs largest probes together, or the limit.
  std::vector<int64_t> sizes;
  for (const PreparedProbe& p : probes) sizes.push_back(ProbeBlocks(p, c, options.block_size));
  std::sort(sizes.rbegin(), sizes.rend());
  int64_t want = 0;
  for (size_t i = 0; i < sizes.size() && i < static_cast<size_t>(options.max_seqs); ++i) {
    want += sizes[i];
  }
  const int64_t pool = std::min(want, limit);
  if (!sizes.empty() && sizes[0] > pool) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a probe needs ", sizes[0], " KV blocks; the device holds ", pool));
  }
  HKV_RETURN_IF_ERROR(worker->AllocateKvPool(pool));
  ProbeRunReport report;
  report.probes.resize(probes.size());
  size_t begin = 0;
  while (begin < probes.size()) {
    size_t end = begin;
    int64_t used = 0;
    while (end < probes.size() && end - begin < static_cast<size_t>(options.max_seqs) &&
           used + ProbeBlocks(probes[end], c, options.block_size) <= pool) {
      used += ProbeBlocks(probes[end], c, options.block_size);
      ++end;
    }
    HKV_RETURN_IF_ERROR(RunGroup(worker, tokenizer, options, probes, begin, end, &report));
    begin = end;
  }
  return report;
}

}  // namespace hkv
