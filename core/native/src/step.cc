#include "step.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace seqserve::decoder {

Step::Step(const py::dict& weights, int num_layers, int num_heads, bool norm_first,
           const std::string& act, float eps)
    : layers_(checked_layers(num_layers)), heads_(num_heads),
      emb_(embedding(weights, "embed", num_heads)), act_(activation(act)) {
  const int d = emb_.d;
  res_ = Residuals{norm_first, eps, d};
  ff_ = static_cast<int>(weight(weights, "layers.0.w_ff_1").shape(1));
  for (int i = 0; i < num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    Layer& layer = layers_[i];
    for (int j = 0; j < 3; ++j) layer.norms[j] = norm(weights, p + "norm" + std::to_string(j), d);
    layer.qkv = matrix(weights, p, "qkv", d, 3 * d);
    layer.self_out = matrix(weights, p, "self_out", d, d);
    layer.cross_q = matrix(weights, p, "cross_q", d, d);
    layer.cross_out = matrix(weights, p, "cross_out", d, d);
    layer.ff_1 = matrix(weights, p, "ff_1", d, ff_);
    layer.ff_2 = matrix(weights, p, "ff_2", ff_, d);
  }
  final_norm_ = optional_norm(weights, "norm", d);
  out_ = matrix(weights, "", "out", d, emb_.vocab);
}

py::tuple Step::step(const Longs& tokens, const Longs& positions, const Bools& past_mask,
                     const Bools& src_mask, const Parts& past_k, const Parts& past_v,
                     const Parts& cross_k, const Parts& cross_v,
                     const std::optional<Longs>& past_rows, const std::optional<Slots>& past_slots,
                     const std::optional<Longs>& cross_rows,
                     const std::optional<Slots>& cross_slots) {
  if (tokens.ndim() != 2 || past_mask.ndim() != 2 || src_mask.ndim() != 2)
    throw std::invalid_argument("tokens [R, 1], past_mask [R, P], src_mask [R, S] expected");
  const int rows = static_cast<int>(tokens.shape(0));
  const int past = static_cast<int>(past_mask.shape(1)), src = static_cast<int>(src_mask.shape(1));
  if (tokens.size() != rows || positions.size() != rows || past_mask.shape(0) != rows ||
      src_mask.shape(0) != rows)
    throw std::invalid_argument("tokens, positions and masks must have R rows");
  View pv_in, cv_in;
  const View pk_in = view(past_k, past_v, past_rows, past_slots, rows, past, "past", &pv_in);
  const View ck_in = view(cross_k, cross_v, cross_rows, cross_slots, rows, src, "cross", &cv_in);
  const std::int64_t* tok = tokens.data();
  const std::int64_t* pos = positions.data();
  const bool* sm = src_mask.data();
  for (int r = 0; r < rows; ++r) {
    if (tok[r] < 0 || tok[r] >= emb_.vocab)
      throw std::invalid_argument("tokens: " + std::to_string(tok[r]) + " is not in [0, V)");
    if (pos[r] < 0 || pos[r] >= emb_.max_positions)
      throw std::invalid_argument("positions: " + std::to_string(pos[r]) + " is past the table");
    const View::Part& part = ck_in.part(r);  // a row attends to its source's slots only
    for (int j = 0; j < src; ++j)
      if (sm[static_cast<std::size_t>(r) * src + j] &&
          (j < part.first || j >= part.first + part.count))
        throw std::invalid_argument("src_mask: row " + std::to_string(r) + " is real at " +
                                    std::to_string(j) + ", outside its source's keys");
  }
  const int n = static_cast<int>(layers_.size());
  py::array_t<float> log_probs({rows, emb_.vocab});
  py::list present_k, present_v;
  std::vector<float*> pk(n), pv(n);
  for (int i = 0; i < n; ++i) {
    const std::vector<py::ssize_t> shape = {rows, heads_, past + 1, emb_.head_dim};
    py::array_t<float> k(shape), v(shape);
    pk[i] = k.mutable_data();
    pv[i] = v.mutable_data();
    present_k.append(std::move(k));
    present_v.append(std::move(v));
  }
  float* out = log_probs.mutable_data();
  const bool* pm = past_mask.data();
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> one_at_a_time(busy_);  // the work space below is shared
    run(rows, past, src, tok, pos, pm, sm, pk_in, pv_in, ck_in, cv_in, pk, pv, out);
  }
  return py::make_tuple(std::move(log_probs), std::move(present_k), std::move(present_v));
}

Step::View Step::view(const Parts& keys, const Parts& values, const std::optional<Longs>& rows,
                      const std::optional<Slots>& slots, int count, int width, const char* name,
                      View* values_view) const {
  const std::string what(name);
  if (keys.empty() || keys.size() != values.size())
    throw std::invalid_argument(what + "_k, " + what + "_v: as many parts, at least one");
  if (slots && slots->size() != keys.size())
    throw std::invalid_argument(what + " slots: one (first, count, start) per part expected");
  View out[2];
  for (int which = 0; which < 2; ++which) {
    const Parts& parts = which == 0 ? keys : values;
    const std::string array = what + (which == 0 ? "_k" : "_v");
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const std::vector<Floats>& layers = parts[i];
      if (static_cast<int>(layers.size()) != num_layers())
        throw std::invalid_argument(array + ": one cache array per layer expected");
      View::Part part;
      const Floats& first = layers[0];
      if (first.ndim() != 4 || first.shape(1) != heads_ || first.shape(3) != emb_.head_dim)
        throw std::invalid_argument(array + ": expected [R, H, W, K] per layer");
      part.base_rows = static_cast<int>(first.shape(0));
      part.base_slots = static_cast<int>(first.shape(2));
      const std::array<int, 3> range = slots ? (*slots)[i] : std::array<int, 3>{0, width, 0};
      part.first = range[0];
      part.count = range[1];
      part.start = range[2];
      const long long first_end = static_cast<long long>(part.first) + part.count;
      const long long base_end = static_cast<long long>(part.start) + part.count;
      if (part.first < 0 || part.count < 0 || first_end > width || part.start < 0 ||
          base_end > part.base_slots)
        throw std::invalid_argument(
            array + ": slots " + std::to_string(part.start) + ".." + std::to_string(base_end) +
            " of its " +
            std::to_string(part.base_slots) + " as slots " + std::to_string(part.first) + ".. of " +
            std::to_string(width));
      for (const Floats& layer : layers) {
        if (layer.ndim() != 4 || layer.shape(0) != part.base_rows || layer.shape(1) != heads_ ||
            layer.shape(2) != part.base_slots || layer.shape(3) != emb_.head_dim)
          throw std::invalid_argument(array + ": the layers' shapes differ");
        part.layers.push_back(layer.data());
      }
      if (which == 1 && (part.base_rows != out[0].parts[i].base_rows ||
                         part.base_slots != out[0].parts[i].base_slots))
        throw std::invalid_argument(array + ": shaped unlike " + what + "_k");
      out[which].parts.push_back(std::move(part));
    }
  }
  if (rows) {
    if (rows->ndim() != 2 || rows->shape(0) != count || rows->shape(1) != 2)
      throw std::invalid_argument(what + " rows: (part, row) for each row of the step expected");
    const std::int64_t* r = rows->data();
    for (int i = 0; i < count; ++i) {
      const std::int64_t part = r[2 * i], row = r[2 * i + 1];
      if (part < 0 || part >= static_cast<std::int64_t>(keys.size()) || row < 0 ||
          row >= out[0].parts[part].base_rows)
        throw std::invalid_argument(what + " rows: (" + std::to_string(part) + ", " +
                                    std::to_string(row) + ") is not a row of its parts");
    }
    out[0].rows = out[1].rows = r;
  } else if (keys.size() != 1 || out[0].parts[0].base_rows != count) {
    throw std::invalid_argument(what + "_k: expected [R, H, W, K] per layer");
  }
  *values_view = std::move(out[1]);
  return std::move(out[0]);
}

void Step::run(int rows, int past, int src, const std::int64_t* tok, const std::int64_t* pos,
               const bool* past_mask, const bool* src_mask, const View& past_k,
               const View& past_v, const View& cross_k, const View& cross_v,
               const std::vector<float*>& present_k, const std::vector<float*>& present_v,
               float* log_probs) {
  const int d = emb_.d, hd = emb_.head_dim, slots = past + 1;
  const std::size_t rd = static_cast<std::size_t>(rows) * d;
  x_.resize(rd);
  h_.resize(rd);
  att_.resize(rd);
  y_.resize(rd);
  wide_.resize(static_cast<std::size_t>(rows) * std::max(3 * d, ff_));
  scores_.resize(std::max(slots, src));
  if (self_valid_size_ < static_cast<std::size_t>(rows) * slots) {
    self_valid_size_ = static_cast<std::size_t>(rows) * slots;
    self_valid_.reset(new bool[self_valid_size_]);
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  embed(emb_, tok, pos, rows, x_.data());  // x = embed(token) + pe(position) [R, D]
  for (int r = 0; r < rows; ++r) {
    std::memcpy(&self_valid_[static_cast<std::size_t>(r) * slots], past_mask + r * past,
                past * sizeof(bool));
    self_valid_[static_cast<std::size_t>(r) * slots + past] = true;  // the new slot
  }
  const std::size_t head_past = static_cast<std::size_t>(past) * hd;
  // row r, head h of a past cache into out [P, K]: its slots where they lie, zeros around
  const auto copy_slots = [hd, this](const View& cache, std::size_t l, int r, int h, int past,
                                     float* out) {
    const View::Part& part = cache.part(r);
    const std::size_t before = static_cast<std::size_t>(part.first) * hd;
    const std::size_t real = static_cast<std::size_t>(part.count) * hd;
    std::memset(out, 0, before * sizeof(float));
    std::memcpy(out + before, cache.at(l, r, h, heads_, hd), real * sizeof(float));
    const std::size_t after = static_cast<std::size_t>(past) * hd - before - real;
    std::memset(out + before + real, 0, after * sizeof(float));
  };
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    Layer& layer = layers_[l];
    // self-attention: qkv [R, 3D]; present = past + this step's key/value   [R, H, P+1, K]
    layer.qkv.apply(res_.input(x_.data(), rows, layer.norms[0], h_), rows, d, wide_.data(),
                    3 * d, scratch_);
    for (int r = 0; r < rows; ++r) {
      const float* qkv = wide_.data() + static_cast<std::size_t>(r) * 3 * d;
      for (int h = 0; h < heads_; ++h) {
        const std::size_t rh = static_cast<std::size_t>(r) * heads_ + h;
        float* k = present_k[l] + rh * slots * hd;
        float* v = present_v[l] + rh * slots * hd;
        copy_slots(past_k, l, r, h, past, k);
        copy_slots(past_v, l, r, h, past, v);
        std::memcpy(k + head_past, qkv + d + h * hd, hd * sizeof(float));
        std::memcpy(v + head_past, qkv + 2 * d + h * hd, hd * sizeof(float));
        attend(qkv + h * hd, k, v, &self_valid_[static_cast<std::size_t>(r) * slots], slots, hd,
               scale, scores_.data(), att_.data() + static_cast<std::size_t>(r) * d + h * hd);
      }
    }
    layer.self_out.apply(att_.data(), rows, d, y_.data(), d, scratch_);
    res_.add(x_.data(), y_.data(), rows, layer.norms[0]);
    // cross-attention over the source's keys/values   [R, H, S, K]
    layer.cross_q.apply(res_.input(x_.data(), rows, layer.norms[1], h_), rows, d, wide_.data(),
                        d, scratch_);
    for (int r = 0; r < rows; ++r)
      for (int h = 0; h < heads_; ++h)
        attend(wide_.data() + static_cast<std::size_t>(r) * d + h * hd,
               cross_k.at(l, r, h, heads_, hd), cross_v.at(l, r, h, heads_, hd),
               src_mask + static_cast<std::size_t>(r) * src + cross_k.part(r).first,
               cross_k.part(r).count, hd, scale, scores_.data(),
               att_.data() + static_cast<std::size_t>(r) * d + h * hd);
    layer.cross_out.apply(att_.data(), rows, d, y_.data(), d, scratch_);
    res_.add(x_.data(), y_.data(), rows, layer.norms[1]);
    // feed-forward   [R, D] -> [R, F] -> [R, D]
    feed_forward(res_, layer.norms[2], layer.ff_1, layer.ff_2, act_, x_.data(), rows, h_,
                 wide_.data(), y_.data(), scratch_);
  }
  const float* final = x_.data();
  if (final_norm_) {
    layer_norm(x_.data(), rows, d, final_norm_->gamma.data(), final_norm_->beta.data(), res_.eps,
               h_.data());
    final = h_.data();
  }
  out_.apply(final, rows, d, log_probs, emb_.vocab, scratch_);  // [R, V]
  log_softmax_rows(log_probs, rows, emb_.vocab);
}

}  // namespace seqserve::decoder
