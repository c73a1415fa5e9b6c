#include "gemm.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace seqserve::decoder {
namespace {

Kernel g_choice = Kernel::kAuto;

// Each kernel needs its CPU features and the vector level (simd.h) they belong to.
bool has_vnni() {
#if defined(__x86_64__)
  static const bool cpu = __builtin_cpu_supports("avx512vnni");
  return cpu && isa() == Isa::kAvx512;
#else
  return false;
#endif
}

// AMX needs the CPU's tiles and the kernel's leave to use their state (Linux 5.16+:
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once for the whole process).
bool has_amx() {
#if defined(__x86_64__)
  static const bool yes = [] {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8") ||
        !__builtin_cpu_supports("avx512bw"))
      return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return yes && isa() == Isa::kAvx512;
#else
  return false;
#endif
}

bool has_avx2() { return isa() >= Isa::kAvx2; }

// (a CPU at the AVX-512 level may have it too: Sapphire Rapids, Zen 5)
bool has_vnni256() { return has_avx_vnni() && isa() >= Isa::kAvx2Vnni; }

constexpr const char* kNames[] = {"auto", "amx", "avx512_vnni", "avx_vnni", "avx2", "portable"};
constexpr int kKernels = 6;

bool available(Kernel k) {
  return k == Kernel::kAuto || k == Kernel::kPortable || (k == Kernel::kVnni && has_vnni()) ||
         (k == Kernel::kAmx && has_amx()) || (k == Kernel::kAvxVnni && has_vnni256()) ||
         (k == Kernel::kAvx2 && has_avx2());
}

// The named kernel while the vector level allows it, else the fastest
Kernel chosen() {
  if (g_choice != Kernel::kAuto && available(g_choice)) return g_choice;
  return has_amx()        ? Kernel::kAmx
         : has_vnni()     ? Kernel::kVnni
         : has_vnni256()  ? Kernel::kAvxVnni
         : has_avx2()     ? Kernel::kAvx2
                          : Kernel::kPortable;
}

// Quantise rows of x to uint8: q = round(x / s) + z, s = (max - min) / 255 over the row
// (the range always holds 0, so that 0 is exact and z fits in [0, 255]). The pad up to kp may
// hold any byte: the packed weights are zero there.
inline void row_scale(float lo, float hi, float* scale, std::int32_t* zero, float* inv, float* z) {
  float s = (hi - lo) / 255.f;
  if (!(s > 0.f) || !std::isfinite(s)) s = 1.f;  // all zeros (or not finite: garbage either way)
  *scale = s;
  *inv = 1.f / s;
  *z = std::nearbyint(-lo * *inv);
  *zero = static_cast<std::int32_t>(*z);
}

void quantize_rows_portable(const float* x, int m, int k, std::size_t ldx, int kp,
                            std::uint8_t* q, float* scale, std::int32_t* zero) {
  for (int r = 0; r < m; ++r) {
    const float* row = x + r * ldx;
    float lo = 0.f, hi = 0.f;
    for (int i = 0; i < k; ++i) {
      lo = std::min(lo, row[i]);
      hi = std::max(hi, row[i]);
    }
    float inv, z;
    row_scale(lo, hi, scale + r, zero + r, &inv, &z);
    std::uint8_t* out = q + static_cast<std::size_t>(r) * kp;
    for (int i = 0; i < k; ++i) {
      const float v = std::nearbyint(row[i] * inv) + z;
      out[i] = static_cast<std::uint8_t>(std::min(255.f, std::max(0.f, v)));
    }
    std::memset(out + k, 0, kp - k);  // (any byte would do)
  }
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw"))) void quantize_rows_avx512(
    const float* x, int m, int k, std::size_t ldx, int kp, std::uint8_t* q, float* scale,
    std::int32_t* zero) {
  for (int r = 0; r < m; ++r) {
    const float* row = x + r * ldx;
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    for (int i = 0; i < k; i += 16) {
      const __mmask16 mask = k - i >= 16 ? 0xFFFF : (__mmask16)((1u << (k - i)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(mask, row + i);  // the tail reads as 0
      lo = _mm512_min_ps(lo, v);
      hi = _mm512_max_ps(hi, v);
    }
    float inv, z;
    row_scale(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi), scale + r, zero + r, &inv, &z);
    const __m512 vinv = _mm512_set1_ps(inv), vz = _mm512_set1_ps(z);
    std::uint8_t* out = q + static_cast<std::size_t>(r) * kp;
    for (int i = 0; i < kp; i += 16) {
      const __mmask16 mask = k - i >= 16 ? 0xFFFF : k > i ? (__mmask16)((1u << (k - i)) - 1) : 0;
      const __m512 v = _mm512_maskz_loadu_ps(mask, row + i);
      const __m512 rounded = _mm512_add_ps(
          _mm512_roundscale_ps(_mm512_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
      const __m512 clamped = _mm512_min_ps(_mm512_max_ps(rounded, _mm512_setzero_ps()),
                                           _mm512_set1_ps(255.f));
      const __m128i bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(clamped));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), bytes);  // the pad: any byte (W is 0 there)
    }
  }
}

// The AVX2 kernel's rows: the same bytes as the others' (same rounding, same clamp), widened
// to int16 as its vpmaddwd reads them.
__attribute__((target("avx2,fma"))) inline __m256i first_lanes(int count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// row[i .. i+8), zeros from k on (a masked load only there: it is the slower)
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* row, int i, int k) {
  return k - i >= 8 ? _mm256_loadu_ps(row + i) : _mm256_maskload_ps(row + i, first_lanes(k - i));
}

// row[i .. i+8) (zeros from k on) -> its 8 quantised values as int32
__attribute__((target("avx2,fma"))) inline __m256i quantize8(const float* row, int i, int k,
                                                            __m256 inv, __m256 z) {
  const __m256 v = load8(row, i, k);
  const __m256 rounded = _mm256_add_ps(
      _mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
  return _mm256_cvttps_epi32(
      _mm256_min_ps(_mm256_max_ps(rounded, _mm256_setzero_ps()), _mm256_set1_ps(255.f)));
}

// A row's scale and zero point (row_scale over its range), and 1 / scale and z as vectors
__attribute__((target("avx2,fma"))) inline void row_scale_avx2(const float* row, int k,
                                                              float* scale, std::int32_t* zero,
                                                              __m256* vinv, __m256* vz) {
  // two running ranges, so that each min and max waits on its own chain
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  __m256 lo2 = lo, hi2 = hi;
  int i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m256 a = _mm256_loadu_ps(row + i), b = _mm256_loadu_ps(row + i + 8);
    lo = _mm256_min_ps(lo, a);
    hi = _mm256_max_ps(hi, a);
    lo2 = _mm256_min_ps(lo2, b);
    hi2 = _mm256_max_ps(hi2, b);
  }
  for (; i < k; i += 8) {
    const __m256 v = load8(row, i, k);  // the tail reads as 0
    lo = _mm256_min_ps(lo, v);
    hi = _mm256_max_ps(hi, v);
  }
  lo = _mm256_min_ps(lo, lo2);
  hi = _mm256_max_ps(hi, hi2);
  alignas(32) float los[8], his[8];
  _mm256_store_ps(los, lo);
  _mm256_store_ps(his, hi);
  float low = 0.f, high = 0.f;
  for (int j = 0; j < 8; ++j) {
    low = std::min(low, los[j]);
    high = std::max(high, his[j]);
  }
  float inv, z;
  row_scale(low, high, scale, zero, &inv, &z);
  *vinv = _mm256_set1_ps(inv);
  *vz = _mm256_set1_ps(z);
}

__attribute__((target("avx2,fma"))) void quantize_rows_avx2(const float* x, int m, int k,
                                                           std::size_t ldx, int kp,
                                                           std::int16_t* q, float* scale,
                                                           std::int32_t* zero) {
  for (int r = 0; r < m; ++r) {
    const float* row = x + r * ldx;
    __m256 vinv, vz;
    row_scale_avx2(row, k, scale + r, zero + r, &vinv, &vz);
    std::int16_t* out = q + static_cast<std::size_t>(r) * kp;
    for (int i = 0; i < kp; i += 16) {  // the pad: any value (W is 0 there)
      // 16 values as int16; packs interleaves the 128-bit lanes, the permute restores them
      const __m256i packed = _mm256_packs_epi32(quantize8(row, i, k, vinv, vz),
                                                quantize8(row, i + 8, k, vinv, vz));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          _mm256_permute4x64_epi64(packed, 0xD8));
    }
  }
}

// The same rows as bytes, for AVX-VNNI
__attribute__((target("avx2,fma"))) void quantize_rows_avx2_u8(const float* x, int m, int k,
                                                              std::size_t ldx, int kp,
                                                              std::uint8_t* q, float* scale,
                                                              std::int32_t* zero) {
  for (int r = 0; r < m; ++r) {
    const float* row = x + r * ldx;
    __m256 vinv, vz;
    row_scale_avx2(row, k, scale + r, zero + r, &vinv, &vz);
    std::uint8_t* out = q + static_cast<std::size_t>(r) * kp;
    for (int i = 0; i < kp; i += 32) {  // kp: a multiple of 64; the pad: any byte
      // packs and packus interleave the 128-bit lanes; the permute restores their order
      const __m256i lo16 = _mm256_packs_epi32(quantize8(row, i, k, vinv, vz),
                                              quantize8(row, i + 8, k, vinv, vz));
      const __m256i hi16 = _mm256_packs_epi32(quantize8(row, i + 16, k, vinv, vz),
                                              quantize8(row, i + 24, k, vinv, vz));
      const __m256i bytes = _mm256_packus_epi16(lo16, hi16);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          _mm256_permutevar8x32_epi32(bytes,
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
  }
}
#endif

void quantize_rows(const float* x, int m, int k, std::size_t ldx, int kp, std::uint8_t* q,
                   float* scale, std::int32_t* zero, Isa level) {
#if defined(__x86_64__)
  if (level == Isa::kAvx512) return quantize_rows_avx512(x, m, k, ldx, kp, q, scale, zero);
  if (level >= Isa::kAvx2) return quantize_rows_avx2_u8(x, m, k, ldx, kp, q, scale, zero);
#endif
  quantize_rows_portable(x, m, k, ldx, kp, q, scale, zero);
}

// The portable kernel: the same packed layout, plain loops the compiler vectorises.
SEQSERVE_BODY void panel_portable_body(const std::uint8_t* q, int m, int kp, const std::int8_t* w,
                                       const float* sx, const std::int32_t* zx, const float* sw,
                                       const std::int32_t* colsum, const float* bias, float* y,
                                       std::size_t ldy, int cols) {
  for (int r = 0; r < m; ++r) {
    std::int32_t acc[kPanel] = {};
    const std::uint8_t* a = q + static_cast<std::size_t>(r) * kp;
    for (int g = 0; g < kp / kGroup; ++g) {
      const std::int8_t* b = w + static_cast<std::size_t>(g) * kPanel * kGroup;
      const std::int32_t a0 = a[g * kGroup], a1 = a[g * kGroup + 1], a2 = a[g * kGroup + 2],
                         a3 = a[g * kGroup + 3];
      for (int c = 0; c < kPanel; ++c)
        acc[c] += a0 * b[c * kGroup] + a1 * b[c * kGroup + 1] + a2 * b[c * kGroup + 2] +
                  a3 * b[c * kGroup + 3];
    }
    float* out = y + r * ldy;
    for (int c = 0; c < cols; ++c)
      out[c] = sx[r] * sw[c] * static_cast<float>(acc[c] - zx[r] * colsum[c]) + bias[c];
  }
}
SEQSERVE_MULTIVERSION(panel_portable,
                      (const std::uint8_t* q, int m, int kp, const std::int8_t* w, const float* sx,
                       const std::int32_t* zx, const float* sw, const std::int32_t* colsum,
                       const float* bias, float* y, std::size_t ldy, int cols),
                      (q, m, kp, w, sx, zx, sw, colsum, bias, y, ldy, cols))

#if defined(__x86_64__)
// y[r0 + r, h0 .. h0+16) for r < rows from the int32 sums c[r][0..16) (row stride ldc ints):
// the zero points out, the scales in, the bias added (columns from n on are not written).
// Every vector kernel ends here.
__attribute__((target("avx512f,avx512bw"))) inline void epilogue16(
    const std::int32_t* c, int ldc, int rows, int r0, int h0, int n, const float* sx,
    const std::int32_t* zx, const float* sw, const std::int32_t* colsum, const float* bias,
    float* y, std::size_t ldy) {
  if (h0 >= n) return;
  const __mmask16 mask = n - h0 >= 16 ? 0xFFFF : (__mmask16)((1u << (n - h0)) - 1);
  const __m512 s = _mm512_loadu_ps(sw + h0);
  const __m512i cs = _mm512_loadu_si512(colsum + h0);
  const __m512 b = _mm512_loadu_ps(bias + h0);
  for (int r = 0; r < rows; ++r) {
    const __m512i acc = _mm512_load_si512(c + static_cast<std::size_t>(r) * ldc);
    const __m512i centred =
        _mm512_sub_epi32(acc, _mm512_mullo_epi32(cs, _mm512_set1_epi32(zx[r0 + r])));
    const __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(sx[r0 + r]), s),
                                     _mm512_cvtepi32_ps(centred), b);
    _mm512_mask_storeu_ps(y + static_cast<std::size_t>(r0 + r) * ldy + h0, mask, v);
  }
}

// Up to 8 rows x one panel (32 columns) per call: 16 accumulators, each group of K one
// broadcast of 4 activation bytes per row and two vpdpbusd per row.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile_vnni(
    const std::uint8_t* q, int kp, const std::int8_t* w, const float* sx, const std::int32_t* zx,
    const float* sw, const std::int32_t* colsum, const float* bias, float* y, std::size_t ldy,
    int cols) {
  __m512i acc[M][2];
  for (int r = 0; r < M; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
  const int groups = kp / kGroup;
  for (int g = 0; g < groups; ++g) {
    const __m512i b0 = _mm512_load_si512(w + g * 128);
    const __m512i b1 = _mm512_load_si512(w + g * 128 + 64);
    for (int r = 0; r < M; ++r) {
      std::int32_t four;
      std::memcpy(&four, q + static_cast<std::size_t>(r) * kp + g * kGroup, 4);
      const __m512i a = _mm512_set1_epi32(four);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, b1);
    }
  }
  alignas(64) std::int32_t c[M][kPanel];
  for (int r = 0; r < M; ++r) {
    _mm512_store_si512(&c[r][0], acc[r][0]);
    _mm512_store_si512(&c[r][16], acc[r][1]);
  }
  for (int half = 0; half < 2; ++half)
    epilogue16(&c[0][half * 16], kPanel, M, 0, half * 16, cols, sx, zx, sw, colsum, bias, y, ldy);
}

// The AVX2 kernel, for CPUs without VNNI: exact int16 products (vpmaddwd) on the same packed
// weights, sign-extended as they are read (vpmaddubsw on the bytes would saturate at 255 x 127
// x 2). Up to 4 rows x 8 columns (a quarter panel) per call: 8 accumulators of 4 columns x 2
// partial sums, each group of K one 64-bit broadcast of the row's 4 int16 inputs. (6 rows
// need 16 vector registers with the products' temporaries, all AVX2 has: GCC spilled the
// accumulators to the stack at every group, and the kernel ran at 80 GOPS against 104.)
__attribute__((target("avx2,fma"))) inline void epilogue8(__m256i acc, int r, int h0, int n,
                                                        const float* sx, const std::int32_t* zx,
                                                        const float* sw,
                                                        const std::int32_t* colsum,
                                                        const float* bias, float* y,
                                                        std::size_t ldy) {
  if (h0 >= n) return;
  const __m256 s = _mm256_loadu_ps(sw + h0);  // (sw, colsum and bias are padded to the panel)
  const __m256i cs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum + h0));
  const __m256 b = _mm256_loadu_ps(bias + h0);
  const __m256i centred = _mm256_sub_epi32(acc, _mm256_mullo_epi32(cs, _mm256_set1_epi32(zx[r])));
  const __m256 v =
      _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(sx[r]), s), _mm256_cvtepi32_ps(centred), b);
  float* out = y + static_cast<std::size_t>(r) * ldy + h0;
  if (n - h0 >= 8)
    _mm256_storeu_ps(out, v);
  else
    _mm256_maskstore_ps(out, first_lanes(n - h0), v);
}

// acc += the pairwise int16 products of a and b, summed into int32 lanes, in place (as
// dpbusd256 below: GCC's intrinsics copied every accumulator through another register).
__attribute__((target("avx2,fma"))) inline __m256i madd_add(__m256i acc, __m256i a, __m256i b) {
  __m256i product;
  asm("vpmaddwd %3, %2, %1\n\tvpaddd %1, %0, %0"
      : "+x"(acc), "=&x"(product)
      : "x"(a), "xm"(b));
  return acc;
}

template <int M>
__attribute__((target("avx2,fma"))) void tile_avx2(const std::int16_t* q, int kp,
                                                  const std::int8_t* w, int h0, const float* sx,
                                                  const std::int32_t* zx, const float* sw,
                                                  const std::int32_t* colsum, const float* bias,
                                                  float* y, std::size_t ldy, int n) {
  __m256i acc[M][2];
  for (int r = 0; r < M; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int groups = kp / kGroup;
  for (int g = 0; g < groups; ++g) {
    // columns 0-3 and 4-7 of the quarter, 4 int8 each -> int16 lanes (column, k 0-1 | k 2-3)
    const auto* group = reinterpret_cast<const __m128i*>(w + g * 128);
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_load_si128(group));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_load_si128(group + 1));
    for (int r = 0; r < M; ++r) {
      long long four;
      std::memcpy(&four, q + static_cast<std::size_t>(r) * kp + g * kGroup, 8);
      const __m256i a = _mm256_set1_epi64x(four);
      acc[r][0] = madd_add(acc[r][0], a, b0);
      acc[r][1] = madd_add(acc[r][1], a, b1);
    }
  }
  // pairs of partial sums -> columns 0, 1, 4, 5 | 2, 3, 6, 7 -> in order
  for (int r = 0; r < M; ++r) {
    const __m256i sums = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
    epilogue8(sums, r, h0, n, sx, zx, sw, colsum, bias, y, ldy);
  }
}

// A 256-bit kernel's tile: up to its row count of quantised rows (Q: int16 for AVX2, bytes for
// AVX-VNNI) times the columns h0 on of one panel's group layout, written to y.
template <typename Q>
using Tile256 = void (*)(const Q*, int, const std::int8_t*, int, const float*,
                         const std::int32_t*, const float*, const std::int32_t*, const float*,
                         float*, std::size_t, int);
constexpr int kTileRows = 4;  // (6 need more than AVX2's 16 vector registers: GCC spilled)
constexpr Tile256<std::int16_t> kAvx2Tiles[kTileRows] = {tile_avx2<1>, tile_avx2<2>,
                                                         tile_avx2<3>, tile_avx2<4>};

// Every `cols` columns of every panel, every kTileRows rows: the tile for that many rows
template <int cols, typename Q>
void gemm_256(const Tile256<Q> (&tiles)[kTileRows], const Q* q, int m, int kp,
              const std::int8_t* packed, const float* sx, const std::int32_t* zx,
              const float* sw, const std::int32_t* colsum, const float* bias, float* y,
              std::size_t ldy, int n) {
  const std::size_t panel_bytes = static_cast<std::size_t>(kp) * kPanel;
  for (int h0 = 0; h0 < n; h0 += cols) {
    const std::int8_t* w = packed + (h0 / kPanel) * panel_bytes + (h0 % kPanel) * kGroup;
    for (int r0 = 0; r0 < m; r0 += kTileRows) {
      const int rows = std::min(kTileRows, m - r0);
      tiles[rows - 1](q + static_cast<std::size_t>(r0) * kp, kp, w, h0, sx + r0, zx + r0, sw,
                      colsum, bias, y + static_cast<std::size_t>(r0) * ldy, ldy, n);
    }
  }
}

// acc += the 4-byte dot products of a (uint8) and b (int8), in place. GCC's intrinsic copied
// every accumulator through another register at each use (and spilled one): the inline
// instruction keeps each in its register.
__attribute__((target("avx2,fma,avxvnni"))) inline __m256i dpbusd256(__m256i acc, __m256i a,
                                                                    __m256i b) {
  asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "xm"(b));
  return acc;
}

// The AVX-VNNI kernel: AVX-512 VNNI's dot products (vpdpbusd) on 256-bit vectors, for CPUs
// that have them without AVX-512. Up to 4 rows x 16 columns (half a panel) per call: 8
// accumulators of 8 columns, each group of K one broadcast of 4 activation bytes per row and
// two vpdpbusd per row.
template <int M>
__attribute__((target("avx2,fma,avxvnni"))) void tile_avx_vnni(
    const std::uint8_t* q, int kp, const std::int8_t* w, int h0, const float* sx,
    const std::int32_t* zx, const float* sw, const std::int32_t* colsum, const float* bias,
    float* y, std::size_t ldy, int n) {
  __m256i acc[M][2];
  for (int r = 0; r < M; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int groups = kp / kGroup;
  for (int g = 0; g < groups; ++g) {
    const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + g * 128));
    const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + g * 128 + 32));
    for (int r = 0; r < M; ++r) {
      std::int32_t four;
      std::memcpy(&four, q + static_cast<std::size_t>(r) * kp + g * kGroup, 4);
      const __m256i a = _mm256_set1_epi32(four);
      acc[r][0] = dpbusd256(acc[r][0], a, b0);
      acc[r][1] = dpbusd256(acc[r][1], a, b1);
    }
  }
  for (int r = 0; r < M; ++r) {
    epilogue8(acc[r][0], r, h0, n, sx, zx, sw, colsum, bias, y, ldy);
    epilogue8(acc[r][1], r, h0 + 8, n, sx, zx, sw, colsum, bias, y, ldy);
  }
}

constexpr Tile256<std::uint8_t> kAvxVnniTiles[kTileRows] = {
    tile_avx_vnni<1>, tile_avx_vnni<2>, tile_avx_vnni<3>, tile_avx_vnni<4>};

// The AMX kernel. The quantised rows are padded to a multiple of 16 with zeros (tiles have 16
// rows). Four 16 x 16 int32 accumulator tiles, so that four tile products are in flight: 16
// rows by two panels (64 columns), or 32 rows by one panel. Each 64 bytes of K one A tile
// [16, 64] per row block and, per 16 columns, a B tile [16 groups of K, 64] read straight from
// the packed panel (row stride 128: a panel's two halves interleave).
struct TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

template <int Panels>
__attribute__((target("amx-tile,amx-int8"))) inline void amx_block(const std::uint8_t* a, int kp,
                                                                     const std::int8_t* w,
                                                                     std::size_t panel_bytes,
                                                                     std::int32_t* c) {
  // tiles 0-3: C (16 columns each), 4: A, 5-6: B
  _tile_zero(0);
  _tile_zero(1);
  if (Panels == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int k0 = 0; k0 < kp; k0 += 64) {
    const std::int8_t* b = w + k0 * kPanel;
    _tile_loadd(4, a + k0, kp);
    _tile_loadd(5, b, 2 * 64);
    _tile_loadd(6, b + 64, 2 * 64);
    _tile_dpbusd(0, 4, 5);
    _tile_dpbusd(1, 4, 6);
    if (Panels == 2) {
      _tile_loadd(5, b + panel_bytes, 2 * 64);
      _tile_loadd(6, b + panel_bytes + 64, 2 * 64);
      _tile_dpbusd(2, 4, 5);
      _tile_dpbusd(3, 4, 6);
    }
  }
  constexpr int ld = 2 * kPanel * 4;  // c is [16, 64] int32
  _tile_stored(0, c, ld);
  _tile_stored(1, c + 16, ld);
  if (Panels == 2) {
    _tile_stored(2, c + 32, ld);
    _tile_stored(3, c + 48, ld);
  }
}

// Two row blocks by one panel (32 x 32): tiles 0-3 C (rows 0-15 / 16-31, columns 0-15 /
// 16-31), 4-5 A (the two row blocks), 6-7 B; four tile loads per four products, where the
// 16-row block needs five. For inputs of more than 16 rows (the encoder's).
__attribute__((target("amx-tile,amx-int8"))) inline void amx_block_2x2(const std::uint8_t* a,
                                                                         int kp,
                                                                         const std::int8_t* w,
                                                                         std::int32_t* c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const std::uint8_t* a1 = a + static_cast<std::size_t>(16) * kp;
  for (int k0 = 0; k0 < kp; k0 += 64) {
    const std::int8_t* b = w + k0 * kPanel;
    _tile_loadd(4, a + k0, kp);
    _tile_loadd(5, a1 + k0, kp);
    _tile_loadd(6, b, 2 * 64);
    _tile_loadd(7, b + 64, 2 * 64);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  constexpr int ld = 2 * kPanel * 4;  // c is [32, 64] int32; this block fills [32, 32]
  _tile_stored(0, c, ld);
  _tile_stored(1, c + 16, ld);
  _tile_stored(2, c + 16 * 2 * kPanel, ld);
  _tile_stored(3, c + 16 * 2 * kPanel + 16, ld);
}

__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) void gemm_amx(
    const std::uint8_t* q, int m, int kp, const std::int8_t* packed, int np, const float* sx,
    const std::int32_t* zx, const float* sw, const std::int32_t* colsum, const float* bias,
    float* y, std::size_t ldy, int n) {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
  alignas(64) std::int32_t c[32][2 * kPanel];
  constexpr int ldc = 2 * kPanel;
  const std::size_t panel_bytes = static_cast<std::size_t>(kp) * kPanel;
  const int panels = np / kPanel;
  const auto finish = [&](int rows, int r0, int h0, int quarters) {
    for (int quarter = 0; quarter < quarters; ++quarter)
      epilogue16(&c[0][quarter * 16], ldc, rows, r0, h0 + quarter * 16, n, sx, zx, sw, colsum,
                   bias, y, ldy);
  };
  if (m > 16) {  // 32 rows by one panel at a time; a last block of 16 rows or fewer alone
    for (int p = 0; p < panels; ++p) {
      const std::int8_t* w = packed + p * panel_bytes;
      int r0 = 0;
      for (; m - r0 > 16; r0 += 32) {
        amx_block_2x2(q + static_cast<std::size_t>(r0) * kp, kp, w, &c[0][0]);
        const int rows = std::min(32, m - r0);
        finish(rows, r0, p * kPanel, 2);
      }
      if (r0 < m) {
        amx_block<1>(q + static_cast<std::size_t>(r0) * kp, kp, w, panel_bytes, &c[0][0]);
        finish(m - r0, r0, p * kPanel, 2);
      }
    }
  } else {  // 16 rows by two panels at a time (the decoder step's few rows)
    for (int p = 0; p < panels; p += 2) {
      const bool two = p + 1 < panels;
      const std::int8_t* w = packed + p * panel_bytes;
      if (two)
        amx_block<2>(q, kp, w, panel_bytes, &c[0][0]);
      else
        amx_block<1>(q, kp, w, panel_bytes, &c[0][0]);
      finish(m, 0, p * kPanel, two ? 4 : 2);
    }
  }
  _tile_release();
}

using Tile = void (*)(const std::uint8_t*, int, const std::int8_t*, const float*,
                      const std::int32_t*, const float*, const std::int32_t*, const float*, float*,
                      std::size_t, int);
constexpr Tile kTiles[8] = {tile_vnni<1>, tile_vnni<2>, tile_vnni<3>, tile_vnni<4>,
                            tile_vnni<5>, tile_vnni<6>, tile_vnni<7>, tile_vnni<8>};
#endif

}  // namespace

void Int8Matrix::Free::operator()(void* p) const { std::free(p); }

Int8Matrix::Int8Matrix(const float* w, const float* bias, int k, int n)
    : k_(k), n_(n), kp_((k + kDepth - 1) / kDepth * kDepth), np_((n + kPanel - 1) / kPanel * kPanel) {
  const std::size_t bytes = static_cast<std::size_t>(np_) * kp_;
  auto* raw = static_cast<std::int8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  if (raw == nullptr) throw std::bad_alloc();
  packed_.reset(raw);
  std::memset(raw, 0, bytes);
  scale_.assign(np_, 1.f);
  colsum_.assign(np_, 0);
  bias_.assign(np_, 0.f);
  for (int c = 0; c < n; ++c) {
    float amax = 0.f;
    for (int i = 0; i < k; ++i) amax = std::max(amax, std::fabs(w[static_cast<std::size_t>(i) * n + c]));
    const float s = amax > 0.f ? amax / 127.f : 1.f;
    scale_[c] = s;
    bias_[c] = bias != nullptr ? bias[c] : 0.f;
    const int panel = c / kPanel, col = c % kPanel;
    std::int32_t sum = 0;
    for (int i = 0; i < k; ++i) {
      const float v = std::nearbyint(w[static_cast<std::size_t>(i) * n + c] / s);
      const auto qv = static_cast<std::int8_t>(std::min(127.f, std::max(-127.f, v)));
      sum += qv;
      const std::size_t at = (static_cast<std::size_t>(panel) * (kp_ / kGroup) + i / kGroup) *
                                 (kPanel * kGroup) +
                             col * kGroup + i % kGroup;
      raw[at] = qv;
    }
    colsum_[c] = sum;
  }
}

void Int8Matrix::apply(const float* x, int m, std::size_t ldx, float* y, std::size_t ldy,
                       std::vector<std::uint8_t>& scratch) const {
  if (m <= 0) return;  // nothing to multiply (the AMX kernel would read a whole tile)
  // scratch: the quantised rows [m rounded up to 16, kp] (the AMX kernel reads whole tiles
  // of 16 rows: the extra ones are zeros), then their scales [m] and zero points [m]
  const Kernel kernel = chosen();
  // scratch: the quantised rows [m rounded up to 16, kp] (the AMX kernel reads whole tiles
  // of 16 rows: the extra ones are zeros; the AVX2 kernel's are int16), then their scales [m]
  // and zero points [m]
  const int mp = (m + 15) / 16 * 16;
  const std::size_t width = kernel == Kernel::kAvx2 ? 2 : 1;
  const std::size_t qbytes = static_cast<std::size_t>(mp) * kp_ * width;
  const std::size_t need = qbytes + static_cast<std::size_t>(m) * 8;
  if (scratch.size() < need) scratch.resize(need);
  std::uint8_t* q = scratch.data();
  auto* sx = reinterpret_cast<float*>(q + qbytes);
  auto* zx = reinterpret_cast<std::int32_t*>(q + qbytes + static_cast<std::size_t>(m) * 4);
#if defined(__x86_64__)
  if (kernel == Kernel::kAvx2) {
    auto* q16 = reinterpret_cast<std::int16_t*>(q);
    quantize_rows_avx2(x, m, k_, ldx, kp_, q16, sx, zx);
    gemm_256<8>(kAvx2Tiles, q16, m, kp_, packed_.get(), sx, zx, scale_.data(), colsum_.data(),
                bias_.data(), y, ldy, n_);  // a quarter panel at a time
    return;
  }
#endif
  quantize_rows(x, m, k_, ldx, kp_, q, sx, zx,
                kernel == Kernel::kPortable ? Isa::kBaseline : isa());
  std::memset(q + static_cast<std::size_t>(m) * kp_, 0, static_cast<std::size_t>(mp - m) * kp_);
#if defined(__x86_64__)
  if (kernel == Kernel::kAvxVnni) {
    gemm_256<16>(kAvxVnniTiles, q, m, kp_, packed_.get(), sx, zx, scale_.data(),
                 colsum_.data(), bias_.data(), y, ldy, n_);  // half a panel at a time
    return;
  }
  if (kernel == Kernel::kAmx) {
    gemm_amx(q, m, kp_, packed_.get(), np_, sx, zx, scale_.data(), colsum_.data(), bias_.data(), y,
             ldy, n_);
    return;
  }
#endif
  const std::size_t panel_bytes = static_cast<std::size_t>(kp_) * kPanel;
  for (int p = 0; p < np_ / kPanel; ++p) {
    const int c0 = p * kPanel, cols = std::min(kPanel, n_ - c0);
    const std::int8_t* w = packed_.get() + p * panel_bytes;
    for (int r0 = 0; r0 < m; r0 += 8) {
      const int rows = std::min(8, m - r0);
#if defined(__x86_64__)
      if (kernel == Kernel::kVnni) {
        kTiles[rows - 1](q + r0 * kp_, kp_, w, sx + r0, zx + r0, scale_.data() + c0,
                         colsum_.data() + c0, bias_.data() + c0, y + r0 * ldy + c0, ldy, cols);
        continue;
      }
#endif
      panel_portable(q + r0 * kp_, rows, kp_, w, sx + r0, zx + r0, scale_.data() + c0,
                     colsum_.data() + c0, bias_.data() + c0, y + r0 * ldy + c0, ldy, cols);
    }
  }
}

const char* kernel_name() { return kNames[static_cast<int>(chosen())]; }

std::vector<std::string> kernels() {
  std::vector<std::string> out;
  for (int i = 1; i < kKernels; ++i)
    if (available(static_cast<Kernel>(i))) out.emplace_back(kNames[i]);
  return out;
}

bool use_kernel(const std::string& name) {
  for (int i = 0; i < kKernels; ++i)
    if (name == kNames[i] && available(static_cast<Kernel>(i))) {
      g_choice = static_cast<Kernel>(i);
      return true;
    }
  return false;
}

}  // namespace seqserve::decoder
