#pragma once
// CPU references of the kernels, in fp32/fp64 on float copies of the inputs, for the GPU tests
// and the benchmark's correctness check. Plain C++ (built in CPU-only builds too).
// Selection's reference is headkv/selection.h (WindowScores, SelectKept); tests use it.
//
// Thread-safe: pure functions.

#include <cstdint>
#include <vector>

namespace hkv::kernels::ref {

// Round-to-nearest-even conversions to/from the 16-bit storage formats.
uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);

// A host copy of a PagedKvView (see kernels/paged_kv.h) with float pools.
struct HostPagedKv {
  const int32_t* indptr = nullptr;
  const int32_t* indices = nullptr;
  const int32_t* last_len = nullptr;
  const float* k_pool = nullptr;  // [num_blocks, block_size, head_dim] at block_stride
  const float* v_pool = nullptr;
  int64_t block_stride = 0;
  int32_t block_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
};

// Token count of row r.
int64_t RowLength(const HostPagedKv& kv, int64_t r);

// Decode attention: for seq s, query head h: softmax(q.K^T*scale) V over row (s, h/group).
//   q, out: [num_seqs, num_q_heads, head_dim]. Empty rows give zeros.
void DecodeAttention(const float* q, const HostPagedKv& kv, int32_t num_seqs, int32_t num_q_heads,
                     float scale, float* out);

// Causal prefill attention of ONE sequence's chunk of nq queries: query i sees the P tokens
// of its paged row (prefix may be null -> P = 0) then chunk keys 0..i.
//   q, out: [nq, num_q_heads, head_dim]; k, v: [nq, num_kv_heads, head_dim]; `seq` picks the
//   prefix rows (seq * num_kv_heads + kv_head).
void PrefillAttention(const float* q, const float* k, const float* v, int32_t nq,
                      int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
                      const HostPagedKv* prefix, int32_t seq, float scale, float* out);

// out = (x [+ residual]) / rms * weight; residual (if given) is updated to x + residual.
void RmsNorm(const float* x, float* residual, const float* weight, int32_t rows, int32_t dim,
             float eps, float* out);

// In-place RoPE on x [tokens, heads, head_dim]; interleaved = llama2.c pairing.
void Rope(float* x, int32_t tokens, int32_t heads, int32_t head_dim, const int32_t* pos,
          float theta, const float* inv_freq, bool interleaved);

// silu(gate) * up, element-wise over n.
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);

// c[m, n] = a[m, k] * w[n, k]^T, row-major (lda = ldw = k, ldc = n), double accumulation.
void MatmulRowMajor(const float* a, const float* w, float* c, int32_t m, int32_t n, int32_t k);

// The ids a sampler with these settings may return (see kernels/sampling.h), with their
// renormalised probabilities (0 for ids that cannot be drawn). Greedy -> one-hot argmax.
std::vector<double> SamplingDistribution(const float* logits, int32_t vocab, float temperature,
                                         int32_t top_k, float top_p);

// Attention probe of one query row (attention_probe.h): softmax(q . k_j * scale) over the
// whole of row `row` (fp64), then the top_n positions of [0, prompt_len) by falling weight,
// ties to the lower position, and their weights. REQUIRES: 1 <= top_n <= prompt_len <= the
// row's length.
void AttentionProbe(const float* q, const HostPagedKv& kv, int64_t row, int32_t prompt_len,
                    int32_t top_n, float scale, int32_t* positions, float* weights);

// GatherPageTable (page_table_gather.h): out[dst + i] = (from_upload ? upload : prev)[src + i]
// for each segment of 4 ints (dst, src, count, from_upload).
void GatherPageTable(const int32_t* segments, int32_t num_segments, const int32_t* prev,
                     const int32_t* upload, int32_t* out);

}  // namespace hkv::kernels::ref
