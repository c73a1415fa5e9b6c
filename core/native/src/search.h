// Beam search's ranking in native code: each request's n best candidates among its k rows x V
// tokens, exactly as core/translation/search.py's `best_candidates` defines them (score
// cum[row] + log_probs[row, token] in double, best first, ties by the lower flat index
// row * V + token, NaN as -inf).
#pragma once

#include <cstdint>

namespace seqserve::decoder {

// log_probs [R, V] float32; request i owns rows first[i] .. first[i] + k and cum[i * k ..];
// writes its n best flat indices (into its own k x V) to index[i * n ..] and their scores to
// score[i * n ..]. n <= k * V.
void best_candidates(const float* log_probs, int vocab, const double* cum,
                     const std::int64_t* first, int requests, int k, int n, std::int64_t* index,
                     double* score);

}  // namespace seqserve::decoder
