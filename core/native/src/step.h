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
#include <optional>
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
  // and cross_k/cross_v -> (log_probs [R, V], present_k, present_v: per layer
  // [R, H, P+1, K]). std::invalid_argument names a bad input.
  //
  // The caches are read where they lie: per layer an array [R0, H, W, K] of which row r of
  // this step reads row `rows[r]` (r itself without `rows`, then R0 = R) and slots
  // start..start+P (past) or start..start+S (source). So the search's beam reorders, its
  // dropped rows and trimmed slots, and beams sharing one source cost no copy.
  py::tuple step(const Longs& tokens, const Longs& positions, const Bools& past_mask,
                 const Bools& src_mask, const std::vector<Floats>& past_k,
                 const std::vector<Floats>& past_v, const std::vector<Floats>& cross_k,
                 const std::vector<Floats>& cross_v, const std::optional<Longs>& past_rows,
                 int past_start, const std::optional<Longs>& cross_rows, int cross_start);

 private:
  struct Layer {
    Norm norms[3];  // of the self-attention, cross-attention and feed-forward sublayers
    Int8Matrix qkv, self_out, cross_q, cross_out, ff_1, ff_2;
  };

  // one cache as the step reads it: per layer a base [R0, H, W, K]; row r is base row
  // rows[r] (or r), slots start..
  struct View {
    std::vector<const float*> layers;
    const std::int64_t* rows = nullptr;
    int base_slots = 0, start = 0;
    const float* at(std::size_t layer, int r, int h, int heads, int head_dim) const {
      const std::int64_t row = rows ? rows[r] : r;
      return layers[layer] +
             ((static_cast<std::size_t>(row) * heads + h) * base_slots + start) * head_dim;
    }
  };

  View view(const std::vector<Floats>& layers, const std::optional<Longs>& rows, int start,
            int count, int slots, const char* name) const;
  void run(int rows, int past, int src, const std::int64_t* tok, const std::int64_t* pos,
           const bool* past_mask, const bool* src_mask, const View& past_k, const View& past_v,
           const View& cross_k, const View& cross_v, const std::vector<float*>& present_k,
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
