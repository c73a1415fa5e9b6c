// The translator's decoder step in native code: the computation of export/decoder_step.py
// (`DecoderStep`) on its weights, with int8 products (gemm.h) and fused element-wise work
// (ops.h): a dozen products and a few passes over small arrays per step instead of an
// onnxruntime graph of ~75 nodes. Python calls it through `core.translation.native_model`.
//
// Legend: R rows, P cached length, S source length, D model width, H heads, K head width,
// F feed-forward width, V vocabulary, L decoder layers.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "weights.h"

namespace seqserve::decoder {

class Step {
 public:
  // weights: `embed` [V, D] (scaled), `positions` [N, D], `layers.{i}.norm{j}.*`,
  // `layers.{i}.{w,b}_{qkv,self_out,cross_q,cross_out,ff_1,ff_2}`, `norm.*` (pre-norm),
  // `w_out` [D, V], `b_out` [V]
  Step(const py::dict& weights, int num_layers, int num_heads, bool norm_first,
       const std::string& activation, float eps);

  int vocab() const { return vocab_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int num_heads() const { return heads_; }

  // tokens/positions [R, 1], past_mask [R, P], src_mask [R, S]; per layer past_k/past_v
  // [R, H, P, K] and cross_k/cross_v [R, H, S, K] -> (log_probs [R, V], present_k,
  // present_v: per layer [R, H, P+1, K]). std::invalid_argument names a bad input.
  py::tuple step(const Longs& tokens, const Longs& positions, const Bools& past_mask,
                 const Bools& src_mask, const std::vector<Floats>& past_k,
                 const std::vector<Floats>& past_v, const std::vector<Floats>& cross_k,
                 const std::vector<Floats>& cross_v);

 private:
  struct Layer {
    Norm norms[3];  // of the self-attention, cross-attention and feed-forward sublayers
    Int8Matrix qkv, self_out, cross_q, cross_out, ff_1, ff_2;
  };

  void check_cache(const Floats& a, int rows, int slots, const char* name) const;
  void run(int rows, int past, int src, const std::int64_t* tok, const std::int64_t* pos,
           const bool* past_mask, const bool* src_mask, const std::vector<const float*>& past_k,
           const std::vector<const float*>& past_v, const std::vector<const float*>& cross_k,
           const std::vector<const float*>& cross_v, const std::vector<float*>& present_k,
           const std::vector<float*>& present_v, float* log_probs);

  std::vector<Layer> layers_;
  int heads_, head_dim_ = 0, d_ = 0, ff_ = 0, vocab_ = 0, max_positions_ = 0;
  Residuals res_;
  Activation act_;
  std::vector<float> embed_, pe_;
  bool has_final_norm_ = false;
  Norm final_norm_;
  Int8Matrix out_;
  // work space kept between calls; one call at a time uses it
  std::mutex busy_;
  std::vector<float> x_, h_, att_, y_, wide_, scores_;
  std::vector<std::uint8_t> scratch_;
  std::unique_ptr<bool[]> self_valid_;  // [R, P+1]: the slots each row attends to
  std::size_t self_valid_size_ = 0;
};

}  // namespace seqserve::decoder
