// int8 matrix products for the native decoder step: y = x @ W + b with W [K, N] quantised
// once to int8 per output column (symmetric) and x [M, K] quantised per row at run time to
// uint8 (asymmetric, its own scale and zero point). The int32 sums are exact; the scales apply
// in the epilogue:  y[m, n] = sx[m] * sw[n] * (sum_k qx[m, k] qw[k, n] - zx[m] colsum[n]) + b[n].
//
// Weights are packed for the kernel: columns in panels of 32, and inside a panel each group
// of 4 rows of K as 128 bytes (16 columns x 4 bytes, twice), the operand layout of AVX-512
// VNNI's vpdpbusd and of AMX's B tiles (AVX-VNNI reads 8 columns of a group at a time; AVX2
// sign-extends them as it reads them). Every kernel reads the same layout and gives the same
// int32 sums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace seqserve::decoder {

inline constexpr int kPanel = 32;  // columns per packed panel
inline constexpr int kGroup = 4;   // rows of K per vpdpbusd lane
inline constexpr int kDepth = 64;  // K is padded to a multiple of this (an AMX tile's row)

class Int8Matrix {
 public:
  Int8Matrix() = default;
  // w [k, n] float32, row-major; bias [n] (may be null: zeros)
  Int8Matrix(const float* w, const float* bias, int k, int n);

  int k() const { return k_; }
  int n() const { return n_; }
  int k_padded() const { return kp_; }

  // y [m, n] (row stride ldy) = x [m, k] (row stride ldx) @ W + b. `scratch` holds the
  // quantised rows between calls (grown as needed).
  void apply(const float* x, int m, std::size_t ldx, float* y, std::size_t ldy,
             std::vector<std::uint8_t>& scratch) const;

 private:
  int k_ = 0, n_ = 0, kp_ = 0, np_ = 0;
  struct Free { void operator()(void* p) const; };
  std::unique_ptr<std::int8_t[], Free> packed_;  // [np / 32][kp / 4][128], 64-byte aligned
  std::vector<float> scale_;         // [np] per column
  std::vector<std::int32_t> colsum_; // [np] sum over k of the int8 column
  std::vector<float> bias_;          // [np]
};

// The int8 kernels, fastest first: Intel AMX tiles, AVX-512 VNNI, AVX-VNNI (the same dot
// products on 256-bit vectors), AVX2 (exact int16 products, for CPUs without VNNI) and portable
// loops. The fastest the CPU (and, for AMX, the OS) allows runs unless `use_kernel` names
// another.
enum class Kernel { kAuto, kAmx, kVnni, kAvxVnni, kAvx2, kPortable };
const char* kernel_name();                       // the one in use
std::vector<std::string> kernels();              // the ones this machine can run
bool use_kernel(const std::string& name);        // "auto" or one of `kernels()`; false if not


}  // namespace seqserve::decoder
