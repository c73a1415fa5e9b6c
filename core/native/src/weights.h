// What the native encoder and decoder step share: reading their weights from the dict Python
// passes (export/native_weights.py names them), and the residual blocks around sublayers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gemm.h"
#include "ops.h"

namespace seqserve::decoder {

namespace py = pybind11;
using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Longs = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
using Bools = py::array_t<bool, py::array::c_style | py::array::forcecast>;

// weights[name] as float32 (std::invalid_argument naming it if it is missing)
Floats weight(const py::dict& weights, const std::string& name);

// a layer count from the settings, refused unless 1..256 (std::invalid_argument)
int checked_layers(int layers);

// "relu", "gelu" or "swish"
Activation activation(const std::string& name);

struct Norm {
  std::vector<float> gamma, beta;
};

// `prefix`.weight and `prefix`.bias, of width d
Norm norm(const py::dict& weights, const std::string& prefix, int d);

// the same, or nothing when the model has no such norm (a post-norm stack's last)
std::optional<Norm> optional_norm(const py::dict& weights, const std::string& prefix, int d);

// What the encoder and the decoder step start from: an embedding table [V, D] (`table`) and
// the positions [N, D], checked against each other and the heads.
struct Embedding {
  std::vector<float> table, pe;
  int vocab = 0, d = 0, max_positions = 0, head_dim = 0;
};
Embedding embedding(const py::dict& weights, const std::string& table, int heads);

// `prefix`w_`name` [k, n] and `prefix`b_`name` [n], quantised
Int8Matrix matrix(const py::dict& weights, const std::string& prefix, const std::string& name,
                  int k, int n);

// The residual around each sublayer: pre-norm x + f(norm(x)), or post-norm norm(x + f(x)).
struct Residuals {
  bool norm_first = true;
  float eps = 1e-5f;
  int d = 0;

  // the sublayer's input for rows of x [rows, d]: their pre-norm (written to `work`), or x
  const float* input(const float* x, int rows, const Norm& n, std::vector<float>& work) const;
  // x += y [rows, d], then the post-norm when the model has it
  void add(float* x, const float* y, int rows, const Norm& n) const;
};

// The feed-forward sublayer on x [rows, D], in place: the residual around
// out(act(in(its input))). Work space: `h` for the pre-norm, wide [rows, F], y [rows, D].
void feed_forward(const Residuals& res, const Norm& n, const Int8Matrix& in,
                  const Int8Matrix& out, Activation act, float* x, int rows,
                  std::vector<float>& h, float* wide, float* y,
                  std::vector<std::uint8_t>& scratch);

// x [rows, D] = table rows of `ids` + position rows of `positions`; the ids and positions
// must be in range (checked by the caller)
void embed(const Embedding& e, const std::int64_t* ids, const std::int64_t* positions, int rows,
           float* x);

}  // namespace seqserve::decoder
