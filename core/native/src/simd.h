// The vector instruction set the native code runs: the best the CPU has (AVX-512, AVX2 with
// AVX-VNNI, AVX2 or the x86-64 baseline), unless capped, as ONEDNN_MAX_CPU_ISA caps oneDNN: by
// the environment variable SEQSERVE_NATIVE_ISA ("avx512", "avx2_vnni", "avx2" or "baseline")
// when the library loads, or by `use_isa` (tests, so that one machine runs every level).
// Element-wise loops are built once per level (SEQSERVE_MULTIVERSION; AVX2's serve both AVX2
// levels) and the level chosen per call; the int8 kernels and the hand-written AVX-512 paths
// ask `isa()` too. AVX-VNNI (Alder Lake and later, Sapphire Rapids, Zen 5) adds the int8 dot
// products of AVX-512 VNNI on 256-bit vectors: a level of its own, so that a cap at "avx2"
// stands for the CPUs without any VNNI.
#pragma once

#include <string>
#include <vector>

namespace seqserve::decoder {

enum class Isa { kBaseline, kAvx2, kAvx2Vnni, kAvx512 };
extern const char* const kIsaNames[4];  // by Isa: "baseline", "avx2", "avx2_vnni", "avx512"
Isa isa();
const char* isa_name();
std::vector<std::string> isas();        // the levels this CPU runs, best first
bool has_avx_vnni();                    // the CPU has AVX-VNNI (whatever the level)
bool use_isa(const std::string& name);  // "auto" or one of `isas()`; false if not

}  // namespace seqserve::decoder

// `void name params` calling `name##_body args` (a SEQSERVE_BODY function, written once)
// compiled for each level.
#if defined(__x86_64__) && defined(__GNUC__)
#define SEQSERVE_BODY static inline __attribute__((always_inline))
#define SEQSERVE_MULTIVERSION(name, params, args)                                       \
  __attribute__((target("avx512f,avx512bw,avx2,fma"))) static void name##_avx512 params { \
    name##_body args;                                                                   \
  }                                                                                     \
  __attribute__((target("avx2,fma"))) static void name##_avx2 params { name##_body args; } \
  static void name##_baseline params { name##_body args; }                              \
  void name params {                                                                    \
    switch (isa()) {                                                                    \
      case Isa::kAvx512:                                                                \
        return name##_avx512 args;                                                      \
      case Isa::kAvx2Vnni:                                                              \
      case Isa::kAvx2:                                                                  \
        return name##_avx2 args;                                                        \
      default:                                                                          \
        return name##_baseline args;                                                    \
    }                                                                                   \
  }
#else
#define SEQSERVE_BODY static inline
#define SEQSERVE_MULTIVERSION(name, params, args) \
  void name params { name##_body args; }
#endif
