#include "ops.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "simd.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace seqserve::decoder {
namespace {

// exp(x) for x <= 0 (what softmax needs), to a few ulp: 2^(x log2 e) as 2^n times a
// polynomial of the fraction; branch-free so that loops over it vectorise. Clamped at -87 (1.6e-38,
// still a normal float): never a denormal, whose arithmetic is slow.
inline float exp_nonpositive(float x) {
  x = x < -87.f ? -87.f : x;
  const float t = x * 1.44269504088896341f;  // log2(e)
  const float n = std::floor(t + 0.5f);
  const float f = t - n;  // [-0.5, 0.5)
  // 2^f on [-0.5, 0.5]: a degree-6 fit at Chebyshev nodes (relative error 1.1e-7)
  float p = 1.54697320e-4f;
  p = p * f + 1.34004322e-3f;
  p = p * f + 9.61802560e-3f;
  p = p * f + 5.55032721e-2f;
  p = p * f + 2.40226512e-1f;
  p = p * f + 6.93147207e-1f;
  p = p * f + 1.0f;
  std::int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<std::int32_t>(n) * (1 << 23);  // times 2^n
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// The largest of x[0..n): sixteen running maxima, element-wise (a reduction through one
// variable does not vectorise without -ffinite-math-only), then theirs.
inline float max_of(const float* x, int n) {
  constexpr int kLanes = 16;
  float lanes[kLanes];
  for (int j = 0; j < kLanes; ++j) lanes[j] = -std::numeric_limits<float>::infinity();
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
  float best = -std::numeric_limits<float>::infinity();
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  for (int j = 0; j < kLanes; ++j) best = lanes[j] > best ? lanes[j] : best;
  return best;
}

}  // namespace

SEQSERVE_BODY void layer_norm_body(const float* x, int rows, int d, const float* gamma,
                                   const float* beta, float eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* row = x + static_cast<std::size_t>(r) * d;
    float* o = out + static_cast<std::size_t>(r) * d;
    float sum = 0.f;
    for (int i = 0; i < d; ++i) sum += row[i];
    const float mean = sum / d;
    float sq = 0.f;
    for (int i = 0; i < d; ++i) sq += (row[i] - mean) * (row[i] - mean);
    const float inv = 1.f / std::sqrt(sq / d + eps);
    for (int i = 0; i < d; ++i) o[i] = (row[i] - mean) * inv * gamma[i] + beta[i];
  }
}
SEQSERVE_MULTIVERSION(layer_norm,
                      (const float* x, int rows, int d, const float* gamma, const float* beta,
                       float eps, float* out),
                      (x, rows, d, gamma, beta, eps, out))

SEQSERVE_BODY void activate_body(float* x, std::size_t n, Activation act) {
  switch (act) {
    case Activation::kRelu:
      for (std::size_t i = 0; i < n; ++i) x[i] = x[i] > 0.f ? x[i] : 0.f;
      break;
    case Activation::kGelu:  // the exact (erf) form, as torch's nn.GELU()
      for (std::size_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * 0.70710678f));
      break;
    case Activation::kSwish:  // x sigmoid(x), as nn.SiLU
      for (std::size_t i = 0; i < n; ++i) x[i] = x[i] / (1.f + std::exp(-x[i]));
      break;
  }
}
SEQSERVE_MULTIVERSION(activate, (float* x, std::size_t n, Activation act), (x, n, act))

SEQSERVE_BODY void add_into_body(float* y, const float* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] += x[i];
}
SEQSERVE_MULTIVERSION(add_into, (float* y, const float* x, std::size_t n), (y, x, n))

SEQSERVE_BODY void log_softmax_rows_body(float* x, int rows, int v) {
  for (int r = 0; r < rows; ++r) {
    float* row = x + static_cast<std::size_t>(r) * v;
    const float best = max_of(row, v);
    float sum = 0.f;
    for (int i = 0; i < v; ++i) sum += exp_nonpositive(row[i] - best);
    const float shift = best + std::log(sum);
    for (int i = 0; i < v; ++i) row[i] -= shift;
  }
}
SEQSERVE_MULTIVERSION(log_softmax_rows, (float* x, int rows, int v), (x, rows, v))

namespace {

// The softmax of the valid slots' scores in place (every slot masked: a uniform average, as
// the graphs' -1e9 bias gives); returns 1 / their sum.
inline float softmax_slots(float* scores, const bool* valid, int slots, float best, bool any) {
  float sum = 0.f;
  for (int t = 0; t < slots; ++t) {
    const float p = !any ? 1.f : valid[t] ? exp_nonpositive(scores[t] - best) : 0.f;
    scores[t] = p;
    sum += p;
  }
  return 1.f / sum;
}

SEQSERVE_BODY void attend_portable_body(const float* q, const float* keys, const float* values,
                                        const bool* valid, int slots, int k, float scale,
                                        float* scores, float* out) {
  float best = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int t = 0; t < slots; ++t) {
    if (!valid[t]) continue;
    const float* key = keys + static_cast<std::size_t>(t) * k;
    float dot = 0.f;
    for (int i = 0; i < k; ++i) dot += q[i] * key[i];
    scores[t] = dot * scale;
    best = scores[t] > best ? scores[t] : best;
    any = true;
  }
  const float inv = softmax_slots(scores, valid, slots, best, any);
  for (int i = 0; i < k; ++i) out[i] = 0.f;
  for (int t = 0; t < slots; ++t) {
    if (scores[t] == 0.f) continue;
    const float p = scores[t] * inv;
    const float* value = values + static_cast<std::size_t>(t) * k;
    for (int i = 0; i < k; ++i) out[i] += p * value[i];
  }
}
SEQSERVE_MULTIVERSION(attend_portable,
                      (const float* q, const float* keys, const float* values, const bool* valid,
                       int slots, int k, float scale, float* scores, float* out),
                      (q, keys, values, valid, slots, k, scale, scores, out))

#if defined(__x86_64__)
constexpr int kMaxVectors = 8;  // head widths up to 128 keep the query and output in registers

// out [16 N] = sum over slots of p[t] * inv * values[t]: softmax weights p (0 for a masked
// slot), values [slots, 16 N], the output in N registers
template <int N>
__attribute__((target("avx512f"))) inline void weighted_sum(const float* p, float inv,
                                                            const float* values, int slots,
                                                            float* out) {
  __m512 acc[N];
  for (int j = 0; j < N; ++j) acc[j] = _mm512_setzero_ps();
  for (int t = 0; t < slots; ++t) {
    if (p[t] == 0.f) continue;
    const __m512 w = _mm512_set1_ps(p[t] * inv);
    const float* value = values + static_cast<std::size_t>(t) * 16 * N;
    for (int j = 0; j < N; ++j) acc[j] = _mm512_fmadd_ps(w, _mm512_loadu_ps(value + 16 * j), acc[j]);
  }
  for (int j = 0; j < N; ++j) _mm512_storeu_ps(out + 16 * j, acc[j]);
}

// Head width 16 N (N <= 8): the query and the output stay in N registers each.
template <int N>
__attribute__((target("avx512f"))) void attend_avx512(const float* q, const float* keys,
                                                      const float* values, const bool* valid,
                                                      int slots, float scale, float* scores,
                                                      float* out) {
  constexpr int k = 16 * N;
  __m512 qv[N];
  for (int j = 0; j < N; ++j) qv[j] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * j), _mm512_set1_ps(scale));
  float best = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int t = 0; t < slots; ++t) {
    if (!valid[t]) continue;
    const float* key = keys + static_cast<std::size_t>(t) * k;
    __m512 dot = _mm512_mul_ps(qv[0], _mm512_loadu_ps(key));
    for (int j = 1; j < N; ++j) dot = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(key + 16 * j), dot);
    scores[t] = _mm512_reduce_add_ps(dot);
    best = scores[t] > best ? scores[t] : best;
    any = true;
  }
  weighted_sum<N>(scores, softmax_slots(scores, valid, slots, best, any), values, slots, out);
}

// The same on AVX2 for head width 8 N (N <= 16): the scores with the query read from memory
// (two running sums against FMA latency) and summed across lanes once per slot; the weighted
// sum over column blocks of at most 8 registers.
__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* a, const float* b, int n) {
  __m256 even = _mm256_mul_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b));
  __m256 odd = _mm256_setzero_ps();
  int i = 8;
  for (; i + 16 <= n; i += 16) {
    odd = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), odd);
    even = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), even);
  }
  if (i < n) odd = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), odd);
  const __m256 sum8 = _mm256_add_ps(even, odd);
  __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(sum8), _mm256_extractf128_ps(sum8, 1));
  sum4 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  return _mm_cvtss_f32(_mm_add_ss(sum4, _mm_movehdup_ps(sum4)));
}

// out [8 N] = sum over slots of p[t] * inv * values[t][0, 8 N) (row stride k), N <= 8
template <int N>
__attribute__((target("avx2,fma"))) inline void weighted_sum_avx2(const float* p, float inv,
                                                                 const float* values, int k,
                                                                 int slots, float* out) {
  __m256 acc[N];
  for (int j = 0; j < N; ++j) acc[j] = _mm256_setzero_ps();
  for (int t = 0; t < slots; ++t) {
    if (p[t] == 0.f) continue;
    const __m256 w = _mm256_set1_ps(p[t] * inv);
    const float* value = values + static_cast<std::size_t>(t) * k;
    for (int j = 0; j < N; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(value + 8 * j), acc[j]);
  }
  for (int j = 0; j < N; ++j) _mm256_storeu_ps(out + 8 * j, acc[j]);
}

template <int N>
__attribute__((target("avx2,fma"))) void attend_avx2(const float* q, const float* keys,
                                                    const float* values, const bool* valid,
                                                    int slots, float scale, float* scores,
                                                    float* out) {
  constexpr int k = 8 * N;
  float best = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int t = 0; t < slots; ++t) {
    if (!valid[t]) continue;
    scores[t] = dot_avx2(q, keys + static_cast<std::size_t>(t) * k, k) * scale;
    best = scores[t] > best ? scores[t] : best;
    any = true;
  }
  const float inv = softmax_slots(scores, valid, slots, best, any);
  constexpr int kFirst = N < 8 ? N : 8;
  weighted_sum_avx2<kFirst>(scores, inv, values, k, slots, out);
  if constexpr (N > 8) weighted_sum_avx2<N - 8>(scores, inv, values + 64, k, slots, out + 64);
}

// exp(x) for x <= 0 on 16 floats: exp_nonpositive's arithmetic, lane by lane
__attribute__((target("avx512f"))) inline __m512 exp_nonpositive16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(_mm512_add_ps(t, _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.54697320e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.34004322e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.61802560e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.55032721e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.40226512e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.93147207e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512i shift = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);  // times 2^n
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), shift));
}

// Head width 16 N: the keys transposed once ([k, slots rounded up to 16] in `work`), so that a
// query's scores are 16 at a time, k broadcast-multiply-adds each, with no horizontal sums;
// softmax on those vectors; the weighted sum with the output in N registers.
template <int N>
__attribute__((target("avx512f"))) void attend_queries_avx512(
    const float* q, std::size_t q_stride, int queries, const float* keys, const float* values,
    const bool* valid, int slots, float scale, float* work, float* out, std::size_t out_stride) {
  constexpr int k = 16 * N;
  const int blocks = (slots + 15) / 16, padded = blocks * 16;
  float* kt = work;                                           // [k, padded]
  float* scores = work + static_cast<std::size_t>(k) * padded;  // [padded]
  for (int t = 0; t < padded; ++t)
    for (int i = 0; i < k; ++i)
      kt[static_cast<std::size_t>(i) * padded + t] =
          t < slots ? keys[static_cast<std::size_t>(t) * k + i] : 0.f;
  bool any = false;
  for (int t = 0; t < slots; ++t) any |= valid[t];
  for (int query = 0; query < queries; ++query) {
    const float* qi = q + query * q_stride;
    __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int b = 0; b < blocks; ++b) {
      __m512 acc = _mm512_setzero_ps();
      for (int i = 0; i < k; ++i)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(qi[i]),
                              _mm512_loadu_ps(kt + static_cast<std::size_t>(i) * padded + b * 16),
                              acc);
      __mmask16 live = 0;
      for (int j = 0; j < 16; ++j)
        if (b * 16 + j < slots && (valid[b * 16 + j] || !any)) live |= (__mmask16)(1u << j);
      acc = _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), live,
                               _mm512_mul_ps(acc, _mm512_set1_ps(any ? scale : 0.f)));
      _mm512_storeu_ps(scores + b * 16, acc);
      best = _mm512_max_ps(best, acc);
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(best));
    __m512 sum = _mm512_setzero_ps();
    for (int b = 0; b < blocks; ++b) {
      const __m512 s = _mm512_loadu_ps(scores + b * 16);
      const __mmask16 live = _mm512_cmp_ps_mask(s, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_NEQ_OQ);
      const __m512 p = _mm512_maskz_mov_ps(live, exp_nonpositive16(_mm512_sub_ps(s, top)));
      _mm512_storeu_ps(scores + b * 16, p);
      sum = _mm512_add_ps(sum, p);
    }
    weighted_sum<N>(scores, 1.f / _mm512_reduce_add_ps(sum), values, slots,
                    out + query * out_stride);
  }
}
#endif

}  // namespace

void attend_queries(const float* q, std::size_t q_stride, int queries, const float* keys,
                    const float* values, const bool* valid, int slots, int k, float scale,
                    float* work, float* out, std::size_t out_stride) {
#if defined(__x86_64__)
  if (isa() == Isa::kAvx512 && k % 16 == 0 && k <= 16 * kMaxVectors) {
    using Queries = void (*)(const float*, std::size_t, int, const float*, const float*,
                             const bool*, int, float, float*, float*, std::size_t);
    static constexpr Queries kByWidth[kMaxVectors] = {
        attend_queries_avx512<1>, attend_queries_avx512<2>, attend_queries_avx512<3>,
        attend_queries_avx512<4>, attend_queries_avx512<5>, attend_queries_avx512<6>,
        attend_queries_avx512<7>, attend_queries_avx512<8>};
    return kByWidth[k / 16 - 1](q, q_stride, queries, keys, values, valid, slots, scale, work,
                                out, out_stride);
  }
#endif
  for (int i = 0; i < queries; ++i)
    attend(q + i * q_stride, keys, values, valid, slots, k, scale, work, out + i * out_stride);
}

void attend(const float* q, const float* keys, const float* values, const bool* valid, int slots,
            int k, float scale, float* scores, float* out) {
#if defined(__x86_64__)
  if (isa() == Isa::kAvx512) {
    using Attend = void (*)(const float*, const float*, const float*, const bool*, int, float,
                            float*, float*);
    static constexpr Attend kByWidth[kMaxVectors] = {
        attend_avx512<1>, attend_avx512<2>, attend_avx512<3>, attend_avx512<4>,
        attend_avx512<5>, attend_avx512<6>, attend_avx512<7>, attend_avx512<8>};
    if (k % 16 == 0 && k <= 16 * kMaxVectors)
      return kByWidth[k / 16 - 1](q, keys, values, valid, slots, scale, scores, out);
  }
  if (isa() >= Isa::kAvx2 && k % 8 == 0 && k <= 128) {  // (AVX-512 too, for widths of 8 N)
    using Attend = void (*)(const float*, const float*, const float*, const bool*, int, float,
                            float*, float*);
    static constexpr Attend kByWidth[16] = {
        attend_avx2<1>,  attend_avx2<2>,  attend_avx2<3>,  attend_avx2<4>,
        attend_avx2<5>,  attend_avx2<6>,  attend_avx2<7>,  attend_avx2<8>,
        attend_avx2<9>,  attend_avx2<10>, attend_avx2<11>, attend_avx2<12>,
        attend_avx2<13>, attend_avx2<14>, attend_avx2<15>, attend_avx2<16>};
    return kByWidth[k / 8 - 1](q, keys, values, valid, slots, scale, scores, out);
  }
#endif
  attend_portable(q, keys, values, valid, slots, k, scale, scores, out);
}

}  // namespace seqserve::decoder
