// The decoder step's element-wise and attention operations, on float32 rows. Each has
// AVX-512, AVX2 and baseline builds chosen when the library loads (GCC target_clones).
#pragma once

#include <cstddef>
#include <cstdint>

namespace seqserve::decoder {

enum class Activation { kRelu, kGelu, kSwish };

// out[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta, rows of width d
void layer_norm(const float* x, int rows, int d, const float* gamma, const float* beta, float eps,
                float* out);

// x[i] = act(x[i]), n values
void activate(float* x, std::size_t n, Activation act);

// y[i] += x[i], n values
void add_into(float* y, const float* x, std::size_t n);

// each row of width v replaced by its log-softmax
void log_softmax_rows(float* x, int rows, int v);

// One query row over `slots` keys/values [slots, k] (row stride k): scores q . key * scale,
// slots whose `valid` is false masked out (every slot masked: a uniform average, as the
// graphs' -1e9 bias gives), softmax, out[k] = sum p_t value_t. `scores` holds `slots` floats.
void attend(const float* q, const float* keys, const float* values, const bool* valid, int slots,
            int k, float scale, float* scores, float* out);

// Many query rows over the same `slots` keys/values [slots, k] (one sentence and head of the
// encoder): query i at q + i * q_stride, its output at out + i * out_stride, each as `attend`
// computes it. `work` holds (slots rounded up to 16) * (k + 1) floats.
void attend_queries(const float* q, std::size_t q_stride, int queries, const float* keys,
                    const float* values, const bool* valid, int slots, int k, float scale,
                    float* work, float* out, std::size_t out_stride);

}  // namespace seqserve::decoder
