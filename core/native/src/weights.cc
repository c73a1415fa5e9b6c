#include "weights.h"

#include <cstring>
#include <stdexcept>

namespace seqserve::decoder {

Floats weight(const py::dict& weights, const std::string& name) {
  if (!weights.contains(name)) throw std::invalid_argument("weights: no '" + name + "'");
  return Floats::ensure(weights[name.c_str()]);
}

int checked_layers(int layers) {
  if (layers < 1 || layers > 256)
    throw std::invalid_argument("layers: " + std::to_string(layers) + " is not in 1..256");
  return layers;
}

Activation activation(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "swish") return Activation::kSwish;
  throw std::invalid_argument("activation: '" + name + "' (relu, gelu or swish)");
}

Norm norm(const py::dict& weights, const std::string& prefix, int d) {
  Floats g = weight(weights, prefix + ".weight"), b = weight(weights, prefix + ".bias");
  if (g.size() != d || b.size() != d) throw std::invalid_argument(prefix + ": not of width D");
  return {{g.data(), g.data() + d}, {b.data(), b.data() + d}};
}

std::optional<Norm> optional_norm(const py::dict& weights, const std::string& prefix, int d) {
  if (!weights.contains(prefix + ".weight")) return std::nullopt;
  return norm(weights, prefix, d);
}

Embedding embedding(const py::dict& weights, const std::string& table, int heads) {
  Floats embed = weight(weights, table), pe = weight(weights, "positions");
  if (embed.ndim() != 2 || pe.ndim() != 2 || pe.shape(1) != embed.shape(1))
    throw std::invalid_argument(table + " [V, D] and positions [N, D] expected");
  Embedding e;
  e.vocab = static_cast<int>(embed.shape(0));
  e.d = static_cast<int>(embed.shape(1));
  e.max_positions = static_cast<int>(pe.shape(0));
  if (heads <= 0 || e.d % heads != 0) throw std::invalid_argument("num_heads must divide D");
  e.head_dim = e.d / heads;
  e.table.assign(embed.data(), embed.data() + embed.size());
  e.pe.assign(pe.data(), pe.data() + pe.size());
  return e;
}

Int8Matrix matrix(const py::dict& weights, const std::string& prefix, const std::string& name,
                  int k, int n) {
  Floats w = weight(weights, prefix + "w_" + name), b = weight(weights, prefix + "b_" + name);
  if (w.ndim() != 2 || w.shape(0) != k || w.shape(1) != n || b.size() != n)
    throw std::invalid_argument(prefix + "w_" + name + ": expected [" + std::to_string(k) + ", " +
                                std::to_string(n) + "]");
  return Int8Matrix(w.data(), b.data(), k, n);
}

const float* Residuals::input(const float* x, int rows, const Norm& n,
                              std::vector<float>& work) const {
  if (!norm_first) return x;
  work.resize(static_cast<std::size_t>(rows) * d);
  layer_norm(x, rows, d, n.gamma.data(), n.beta.data(), eps, work.data());
  return work.data();
}

void Residuals::add(float* x, const float* y, int rows, const Norm& n) const {
  add_into(x, y, static_cast<std::size_t>(rows) * d);
  if (!norm_first) layer_norm(x, rows, d, n.gamma.data(), n.beta.data(), eps, x);
}

void feed_forward(const Residuals& res, const Norm& n, const Int8Matrix& in,
                  const Int8Matrix& out, Activation act, float* x, int rows,
                  std::vector<float>& h, float* wide, float* y,
                  std::vector<std::uint8_t>& scratch) {
  in.apply(res.input(x, rows, n, h), rows, res.d, wide, in.n(), scratch);  // [rows, F]
  activate(wide, static_cast<std::size_t>(rows) * in.n(), act);
  out.apply(wide, rows, in.n(), y, res.d, scratch);  // [rows, D]
  res.add(x, y, rows, n);
}

void embed(const Embedding& e, const std::int64_t* ids, const std::int64_t* positions, int rows,
           float* x) {
  const int d = e.d;
  for (int r = 0; r < rows; ++r) {
    const float* t = e.table.data() + ids[r] * d;
    const float* p = e.pe.data() + positions[r] * d;
    float* out = x + static_cast<std::size_t>(r) * d;
    for (int i = 0; i < d; ++i) out[i] = t[i] + p[i];
  }
}

}  // namespace seqserve::decoder
