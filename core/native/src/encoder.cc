#include "encoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace seqserve::decoder {

Encoder::Encoder(const py::dict& weights, int num_layers, int decoder_layers, int num_heads,
                 bool norm_first, const std::string& act, float eps)
    : layers_(checked_layers(num_layers)), decoder_layers_(checked_layers(decoder_layers)),
      heads_(num_heads), emb_(embedding(weights, "encoder.embed", num_heads)),
      act_(activation(act)) {
  const int d = emb_.d;
  res_ = Residuals{norm_first, eps, d};
  ff_ = static_cast<int>(weight(weights, "encoder.layers.0.w_ff_1").shape(1));
  for (int i = 0; i < num_layers; ++i) {
    const std::string p = "encoder.layers." + std::to_string(i) + ".";
    Layer& layer = layers_[i];
    for (int j = 0; j < 2; ++j) layer.norms[j] = norm(weights, p + "norm" + std::to_string(j), d);
    layer.qkv = matrix(weights, p, "qkv", d, 3 * d);
    layer.self_out = matrix(weights, p, "self_out", d, d);
    layer.ff_1 = matrix(weights, p, "ff_1", d, ff_);
    layer.ff_2 = matrix(weights, p, "ff_2", ff_, d);
  }
  final_norm_ = optional_norm(weights, "encoder.norm", d);
  cross_kv_ = matrix(weights, "cross.", "kv", d, 2 * decoder_layers_ * d);
}

py::tuple Encoder::encode(const Longs& src_ids, const Bools& src_mask) {
  if (src_ids.ndim() != 2 || src_mask.ndim() != 2 || src_mask.shape(0) != src_ids.shape(0) ||
      src_mask.shape(1) != src_ids.shape(1))
    throw std::invalid_argument("src_ids and src_mask [B, S] expected");
  const int batch = static_cast<int>(src_ids.shape(0)), src = static_cast<int>(src_ids.shape(1));
  if (src > emb_.max_positions)
    throw std::invalid_argument("src_ids: " + std::to_string(src) + " tokens, past the " +
                                std::to_string(emb_.max_positions) + " positions");
  const std::int64_t* ids = src_ids.data();
  for (py::ssize_t i = 0; i < src_ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= emb_.vocab)
      throw std::invalid_argument("src_ids: " + std::to_string(ids[i]) + " is not in [0, V)");
  const std::vector<py::ssize_t> shape = {decoder_layers_, batch, heads_, src, emb_.head_dim};
  py::array_t<float> cross_k(shape), cross_v(shape);
  float* k = cross_k.mutable_data();
  float* v = cross_v.mutable_data();
  const bool* mask = src_mask.data();
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> one_at_a_time(busy_);
    run(batch, src, ids, mask, k, v);
  }
  return py::make_tuple(std::move(cross_k), std::move(cross_v));
}

void Encoder::run(int batch, int src, const std::int64_t* ids, const bool* mask, float* cross_k,
                  float* cross_v) {
  // Only real tokens are computed: the rows are the (sentence, position) pairs the mask
  // keeps, packed sentence by sentence. A padded position's keys and values are zeros (no
  // decoder row attends to them); the graphs compute them, and no one reads them either.
  packed_.clear();
  spans_.assign(batch + 1, 0);
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < src; ++t)
      if (mask[static_cast<std::size_t>(b) * src + t]) packed_.push_back(b * src + t);
    spans_[b + 1] = static_cast<int>(packed_.size());
  }
  const int rows = static_cast<int>(packed_.size()), d = emb_.d, hd = emb_.head_dim;
  const std::size_t rd = static_cast<std::size_t>(rows) * d;
  x_.resize(rd);
  att_.resize(rd);
  y_.resize(rd);
  kh_.resize(rd);
  vh_.resize(rd);
  wide_.resize(static_cast<std::size_t>(rows) * std::max({3 * d, ff_, 2 * decoder_layers_ * d}));
  scores_.resize(static_cast<std::size_t>((src + 15) / 16 * 16) * (hd + 1));  // attend_queries
  positions_.resize(rows);
  ids_.resize(rows);
  for (int r = 0; r < rows; ++r) {
    positions_[r] = packed_[r] % src;
    ids_[r] = ids[packed_[r]];
  }
  embed(emb_, ids_.data(), positions_.data(), rows, x_.data());  // [rows, D]
  std::unique_ptr<bool[]> valid(new bool[src]);
  for (int t = 0; t < src; ++t) valid[t] = true;  // a sentence's packed rows are all real
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  for (Layer& layer : layers_) {
    // self-attention: qkv [rows, 3D]; sentence b's keys and values gathered per head into
    // kh_/vh_ ([n_b, K] at spans_[b] * D + h * n_b * K), its queries over them
    layer.qkv.apply(res_.input(x_.data(), rows, layer.norms[0], h_), rows, d, wide_.data(),
                    3 * d, scratch_);
    for (int b = 0; b < batch; ++b) {
      const int first = spans_[b], length = spans_[b + 1] - first;
      if (length == 0) continue;
      for (int h = 0; h < heads_; ++h) {
        float* k = &kh_[static_cast<std::size_t>(first) * d + static_cast<std::size_t>(h) * length * hd];
        float* v = &vh_[static_cast<std::size_t>(first) * d + static_cast<std::size_t>(h) * length * hd];
        for (int t = 0; t < length; ++t) {
          const float* qkv = wide_.data() + static_cast<std::size_t>(first + t) * 3 * d;
          std::memcpy(k + static_cast<std::size_t>(t) * hd, qkv + d + h * hd, hd * sizeof(float));
          std::memcpy(v + static_cast<std::size_t>(t) * hd, qkv + 2 * d + h * hd, hd * sizeof(float));
        }
        attend_queries(wide_.data() + static_cast<std::size_t>(first) * 3 * d + h * hd, 3 * d,
                       length, k, v, valid.get(), length, hd, scale, scores_.data(),
                       att_.data() + static_cast<std::size_t>(first) * d + h * hd, d);
      }
    }
    layer.self_out.apply(att_.data(), rows, d, y_.data(), d, scratch_);
    res_.add(x_.data(), y_.data(), rows, layer.norms[0]);
    // feed-forward   [rows, D] -> [rows, F] -> [rows, D]
    feed_forward(res_, layer.norms[1], layer.ff_1, layer.ff_2, act_, x_.data(), rows, h_,
                 wide_.data(), y_.data(), scratch_);
  }
  const float* memory = x_.data();
  if (final_norm_) {
    h_.resize(rd);
    layer_norm(x_.data(), rows, d, final_norm_->gamma.data(), final_norm_->beta.data(), res_.eps,
               h_.data());
    memory = h_.data();
  }
  // every decoder layer's source keys and values in one product: [rows, 2 L D], then laid
  // out as [L, B, H, S, K] (zeros where the mask has no token)
  const int width = 2 * decoder_layers_ * d;
  cross_kv_.apply(memory, rows, d, wide_.data(), width, scratch_);
  const std::size_t head = static_cast<std::size_t>(src) * hd;  // one head's [S, K]
  const std::size_t whole = static_cast<std::size_t>(decoder_layers_) * batch * heads_ * head;
  if (rows < batch * src) {
    std::memset(cross_k, 0, whole * sizeof(float));
    std::memset(cross_v, 0, whole * sizeof(float));
  }
  for (int r = 0; r < rows; ++r) {
    const int b = packed_[r] / src, t = packed_[r] % src;
    const float* kv = wide_.data() + static_cast<std::size_t>(r) * width;
    for (int l = 0; l < decoder_layers_; ++l)
      for (int h = 0; h < heads_; ++h) {
        const std::size_t at =
            ((static_cast<std::size_t>(l) * batch + b) * heads_ + h) * head + t * hd;
        std::memcpy(cross_k + at, kv + 2 * l * d + h * hd, hd * sizeof(float));
        std::memcpy(cross_v + at, kv + (2 * l + 1) * d + h * hd, hd * sizeof(float));
      }
  }
}

}  // namespace seqserve::decoder
