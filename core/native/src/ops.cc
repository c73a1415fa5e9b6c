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

SEQSERVE_CLONES void layer_norm(const float* x, int rows, int d, const float* gamma,
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

SEQSERVE_CLONES void activate(float* x, std::size_t n, Activation act) {
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

SEQSERVE_CLONES void add_into(float* y, const float* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] += x[i];
}

SEQSERVE_CLONES void log_softmax_rows(float* x, int rows, int v) {
  for (int r = 0; r < rows; ++r) {
    float* row = x + static_cast<std::size_t>(r) * v;
    const float best = max_of(row, v);
    float sum = 0.f;
    for (int i = 0; i < v; ++i) sum += exp_nonpositive(row[i] - best);
    const float shift = best + std::log(sum);
    for (int i = 0; i < v; ++i) row[i] -= shift;
  }
}

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

void attend_portable(const float* q, const float* keys, const float* values, const bool* valid,
                     int slots, int k, float scale, float* scores, float* out) {
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

#if defined(__x86_64__)
constexpr int kMaxVectors = 8;  // head widths up to 128 keep the query and output in registers

// Head width 16 N (N <= 8): the query and the output stay in N registers each.
template <int N>
__attribute__((target("avx512f"))) void attend_avx512(const float* q, const float* keys,
                                                      const float* values, const bool* valid,
                                                      int slots, float scale, float* scores,
                                                      float* out) {
  constexpr int n = N, k = 16 * N;
  __m512 qv[N], acc[N];
  for (int j = 0; j < n; ++j) qv[j] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * j), _mm512_set1_ps(scale));
  float best = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int t = 0; t < slots; ++t) {
    if (!valid[t]) continue;
    const float* key = keys + static_cast<std::size_t>(t) * k;
    __m512 dot = _mm512_mul_ps(qv[0], _mm512_loadu_ps(key));
    for (int j = 1; j < n; ++j) dot = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(key + 16 * j), dot);
    scores[t] = _mm512_reduce_add_ps(dot);
    best = scores[t] > best ? scores[t] : best;
    any = true;
  }
  const float inv = softmax_slots(scores, valid, slots, best, any);
  for (int j = 0; j < n; ++j) acc[j] = _mm512_setzero_ps();
  for (int t = 0; t < slots; ++t) {
    if (scores[t] == 0.f) continue;
    const __m512 p = _mm512_set1_ps(scores[t] * inv);
    const float* value = values + static_cast<std::size_t>(t) * k;
    for (int j = 0; j < n; ++j) acc[j] = _mm512_fmadd_ps(p, _mm512_loadu_ps(value + 16 * j), acc[j]);
  }
  for (int j = 0; j < n; ++j) _mm512_storeu_ps(out + 16 * j, acc[j]);
}
#endif

}  // namespace

void attend(const float* q, const float* keys, const float* values, const bool* valid, int slots,
            int k, float scale, float* scores, float* out) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    using Attend = void (*)(const float*, const float*, const float*, const bool*, int, float,
                            float*, float*);
    static constexpr Attend kByWidth[kMaxVectors] = {
        attend_avx512<1>, attend_avx512<2>, attend_avx512<3>, attend_avx512<4>,
        attend_avx512<5>, attend_avx512<6>, attend_avx512<7>, attend_avx512<8>};
    if (k % 16 == 0 && k <= 16 * kMaxVectors)
      return kByWidth[k / 16 - 1](q, keys, values, valid, slots, scale, scores, out);
  }
#endif
  attend_portable(q, keys, values, valid, slots, k, scale, scores, out);
}

}  // namespace seqserve::decoder
