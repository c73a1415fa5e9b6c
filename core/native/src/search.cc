#include "search.h"
#include "simd.h"

#include <cmath>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace seqserve::decoder {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The n best so far, best first. Candidates arrive in index order, so a tie always loses to
// what is kept and goes after every equal score.
struct Best {
  int n, size = 0;
  std::int64_t* index;
  double* score;

  bool full() const { return size == n; }

  void offer(std::int64_t i, double s) {
    if (std::isnan(s)) s = kNegInf;
    if (full() && !(s > score[n - 1])) return;
    int at = full() ? n - 1 : size++;
    while (at > 0 && score[at - 1] < s) {
      score[at] = score[at - 1];
      index[at] = index[at - 1];
      --at;
    }
    score[at] = s;
    index[at] = i;
  }

  // a float a candidate's log-probability must exceed to have a chance: one step below the
  // bar in float, so that no candidate that beats it in double is passed over
  float loose(double cum) const {
    const double bar = score[n - 1] - cum;
    if (bar == kNegInf || std::isnan(bar)) return -std::numeric_limits<float>::infinity();
    return std::nextafter(static_cast<float>(bar), -std::numeric_limits<float>::infinity());
  }
};

#if defined(__x86_64__)
// Tokens t0.. of one row, 64 (AVX-512) or 32 (AVX2) at a time: a block with none above the
// loose bar costs its loads, compares and one branch; only tokens above it are offered, and
// the bar is worked out again only when one is.
__attribute__((target("avx512f"))) int scan_avx512(const float* row, int vocab, int t0,
                                                   double cum, std::int64_t base, Best& best) {
  int t = t0;
  __m512 bar = _mm512_set1_ps(best.loose(cum));
  for (; t + 64 <= vocab; t += 64) {
    __mmask16 over[4];
    for (int j = 0; j < 4; ++j)
      over[j] = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + t + 16 * j), bar, _CMP_GT_OQ);
    if (!(over[0] | over[1] | over[2] | over[3])) continue;
    for (int j = 0; j < 4; ++j)
      for (unsigned bits = over[j]; bits; bits &= bits - 1) {
        const int at = t + 16 * j + __builtin_ctz(bits);
        best.offer(base + at, cum + static_cast<double>(row[at]));
      }
    bar = _mm512_set1_ps(best.loose(cum));
  }
  return t;
}

__attribute__((target("avx2"))) int scan_avx2(const float* row, int vocab, int t0, double cum,
                                              std::int64_t base, Best& best) {
  int t = t0;
  __m256 bar = _mm256_set1_ps(best.loose(cum));
  for (; t + 32 <= vocab; t += 32) {
    __m256 over[4];
    for (int j = 0; j < 4; ++j)
      over[j] = _mm256_cmp_ps(_mm256_loadu_ps(row + t + 8 * j), bar, _CMP_GT_OQ);
    const __m256 any = _mm256_or_ps(_mm256_or_ps(over[0], over[1]), _mm256_or_ps(over[2], over[3]));
    if (_mm256_testz_ps(any, any)) continue;
    for (int j = 0; j < 4; ++j)
      for (unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(over[j])); bits;
           bits &= bits - 1) {
        const int at = t + 8 * j + __builtin_ctz(bits);
        best.offer(base + at, cum + static_cast<double>(row[at]));
      }
    bar = _mm256_set1_ps(best.loose(cum));
  }
  return t;
}
#endif

}  // namespace

void best_candidates(const float* log_probs, int vocab, const double* cum,
                     const std::int64_t* first, int requests, int k, int n, std::int64_t* index,
                     double* score) {
#if defined(__x86_64__)
  const Isa level = isa();
#endif
  for (int i = 0; i < requests; ++i) {
    Best best{n, 0, index + static_cast<std::size_t>(i) * n, score + static_cast<std::size_t>(i) * n};
    for (int b = 0; b < k; ++b) {
      const float* row = log_probs + static_cast<std::size_t>(first[i] + b) * vocab;
      const double c = cum[static_cast<std::size_t>(i) * k + b];
      const std::int64_t base = static_cast<std::int64_t>(b) * vocab;
      int t = 0;
      for (; t < vocab && !best.full(); ++t) best.offer(base + t, c + static_cast<double>(row[t]));
#if defined(__x86_64__)
      if (level == Isa::kAvx512) t = scan_avx512(row, vocab, t, c, base, best);
      if (level == Isa::kAvx2 || level == Isa::kAvx2Vnni)
        t = scan_avx2(row, vocab, t, c, base, best);
#endif
      // the bar moves only when a candidate is kept
      for (float loose = best.loose(c); t < vocab; ++t)
        if (row[t] > loose) {
          best.offer(base + t, c + static_cast<double>(row[t]));
          loose = best.loose(c);
        }
    }
  }
}

}  // namespace seqserve::decoder
