// The translator's encoder in native code: export/translator_graphs.py's `EncoderGraph`
// (the encoder stack, then every decoder layer's source keys and values) on its weights, with
// the decoder step's int8 products and passes.
//
// Legend: B sentences, S source length, D model width, H heads, K head width, L decoder layers.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "weights.h"

namespace seqserve::decoder {

class Encoder {
 public:
  // weights: `encoder.embed` [V, D] (scaled), `positions` [N, D], `encoder.layers.{i}.norm{j}.*`,
  // `encoder.layers.{i}.{w,b}_{qkv,self_out,ff_1,ff_2}`, `encoder.norm.*` (pre-norm), and
  // `cross.w_kv` [D, 2 L D] / `cross.b_kv`: decoder layer l's keys in columns 2lD..(2l+1)D,
  // its values in the next D
  Encoder(const py::dict& weights, int num_layers, int decoder_layers, int num_heads,
          bool norm_first, const std::string& activation, float eps);

  // src_ids [B, S] int64, src_mask [B, S] bool (True = a real token) -> (cross_k, cross_v)
  // [L, B, H, S, K] each. std::invalid_argument names a bad input.
  py::tuple encode(const Longs& src_ids, const Bools& src_mask);

 private:
  struct Layer {
    Norm norms[2];  // of the self-attention and feed-forward sublayers
    Int8Matrix qkv, self_out, ff_1, ff_2;
  };

  void run(int batch, int src, const std::int64_t* ids, const bool* mask, float* cross_k,
           float* cross_v);

  std::vector<Layer> layers_;
  int decoder_layers_, heads_;
  Embedding emb_;  // the token table, the positions, and D, V, N, K
  int ff_ = 0;
  Residuals res_;
  Activation act_;
  std::optional<Norm> final_norm_;
  Int8Matrix cross_kv_;
  std::mutex busy_;
  std::vector<float> x_, h_, att_, y_, wide_, kh_, vh_, scores_;
  std::vector<std::int64_t> positions_, ids_;
  std::vector<int> packed_, spans_;  // the real tokens' b * S + t; sentence b's are spans_[b]..
  std::vector<std::uint8_t> scratch_;
};

}  // namespace seqserve::decoder
