// The translator's decoder step in native code: the computation of export/decoder_step.py
// (`DecoderStep`) on its weights, with int8 products (gemm.h) and fused element-wise work
// (ops.h): a dozen products and a few passes over small arrays per step instead of an
// onnxruntime graph of ~75 nodes. Python calls it through `core.translation.native_model`.
//
// Legend: R rows, P cached length, S source length, D model width, H heads, K head width,
// F feed-forward width, V vocabulary, L decoder layers.
#pragma once

#include <array>
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

  int vocab() const { return emb_.vocab; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int num_heads() const { return heads_; }

  // tokens/positions [R, 1], past_mask [R, P], src_mask [R, S]; the caches past_k/past_v and
  // cross_k/cross_v -> (log_probs [R, V], present_k, present_v: per layer [R, H, P+1, K]).
  // std::invalid_argument names a bad input.
  //
  // The caches are read where they lie. Each is a list of parts, a part per layer an array
  // [R_p, H, W_p, K]. Row r of the step reads row `rows[r] = (p, i)`: row i of part p (without
  // `rows`: one part, row r), whose base slots start..start+count are the step's slots
  // first..first+count (`slots[p] = (first, count, start)`; without `slots`: (0, P or S, 0)).
  // A row's other slots are padding: zeros in present_k/present_v, and its source's must be
  // masked. So the search's beam reorders, its dropped rows and trimmed slots, beams sharing
  // one source and requests joining the batch cost no copy.
  using Parts = std::vector<std::vector<Floats>>;
  using Slots = std::vector<std::array<int, 3>>;
  py::tuple step(const Longs& tokens, const Longs& positions, const Bools& past_mask,
                 const Bools& src_mask, const Parts& past_k, const Parts& past_v,
                 const Parts& cross_k, const Parts& cross_v, const std::optional<Longs>& past_rows,
                 const std::optional<Slots>& past_slots, const std::optional<Longs>& cross_rows,
                 const std::optional<Slots>& cross_slots);

 private:
  struct Layer {
    Norm norms[3];  // of the self-attention, cross-attention and feed-forward sublayers
    Int8Matrix qkv, self_out, cross_q, cross_out, ff_1, ff_2;
  };

  // one cache as the step reads it (see `step`)
  struct View {
    struct Part {
      std::vector<const float*> layers;  // [R_p, H, W_p, K] each
      int base_rows = 0, base_slots = 0, first = 0, count = 0, start = 0;
    };
    std::vector<Part> parts;
    const std::int64_t* rows = nullptr;  // [R, 2]: part, row in it
    const Part& part(int r) const { return parts[rows ? rows[2 * r] : 0]; }
    // row r, head h: its first real slot (the step's slot `part(r).first`)
    const float* at(std::size_t layer, int r, int h, int heads, int head_dim) const {
      const Part& p = part(r);
      const std::int64_t row = rows ? rows[2 * r + 1] : r;
      return p.layers[layer] +
             ((static_cast<std::size_t>(row) * heads + h) * p.base_slots + p.start) * head_dim;
    }
  };

  View view(const Parts& keys, const Parts& values, const std::optional<Longs>& rows,
            const std::optional<Slots>& slots, int count, int width, const char* name,
            View* values_view) const;
  void run(int rows, int past, int src, const std::int64_t* tok, const std::int64_t* pos,
           const bool* past_mask, const bool* src_mask, const View& past_k, const View& past_v,
           const View& cross_k, const View& cross_v, const std::vector<float*>& present_k,
           const std::vector<float*>& present_v, float* log_probs);

  std::vector<Layer> layers_;
  int heads_;
  Embedding emb_;  // the token table, the positions, and D, V, N, K
  int ff_ = 0;
  Residuals res_;
  Activation act_;
  std::optional<Norm> final_norm_;
  Int8Matrix out_;
  // work space kept between calls; one call at a time uses it
  std::mutex busy_;
  std::vector<float> x_, h_, att_, y_, wide_, scores_;
  std::vector<std::uint8_t> scratch_;
  std::unique_ptr<bool[]> self_valid_;  // [R, P+1]: the slots each row attends to
  std::size_t self_valid_size_ = 0;
};

}  // namespace seqserve::decoder
