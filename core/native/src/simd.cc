#include "simd.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>

namespace seqserve::decoder {

const char* const kIsaNames[4] = {"baseline", "avx2", "avx2_vnni", "avx512"};

namespace {

constexpr int kLevels = static_cast<int>(Isa::kAvx512) + 1;  // kIsaNames' length

Isa best_on_cpu() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return has_avx_vnni() ? Isa::kAvx2Vnni : Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// a level this CPU runs: at most its best, and AVX-VNNI's only with AVX-VNNI
bool runs(int level) {
  return level <= static_cast<int>(best_on_cpu()) &&
         (level != static_cast<int>(Isa::kAvx2Vnni) || has_avx_vnni());
}

// the CPU's best, capped by SEQSERVE_NATIVE_ISA (any case; an unknown name caps nothing)
Isa from_environment() {
  const Isa best = best_on_cpu();
  const char* cap = std::getenv("SEQSERVE_NATIVE_ISA");
  if (cap == nullptr) return best;
  std::string name(cap);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (int i = 0; i < kLevels; ++i)
    if (name == kIsaNames[i]) {
      int level = std::min(i, static_cast<int>(best));
      while (!runs(level)) --level;  // avx2_vnni on a CPU without AVX-VNNI: avx2
      return static_cast<Isa>(level);
    }
  return best;
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> level{from_environment()};
  return level;
}

}  // namespace

Isa isa() { return current().load(std::memory_order_relaxed); }

bool has_avx_vnni() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool cpu = __builtin_cpu_supports("avxvnni");
  return cpu;
#else
  return false;
#endif
}

const char* isa_name() { return kIsaNames[static_cast<int>(isa())]; }

std::vector<std::string> isas() {
  std::vector<std::string> out;
  for (int i = static_cast<int>(best_on_cpu()); i >= 0; --i)
    if (runs(i)) out.emplace_back(kIsaNames[i]);
  return out;
}

bool use_isa(const std::string& name) {
  if (name == "auto") {
    current().store(from_environment());
    return true;
  }
  for (int i = 0; i < kLevels; ++i)
    if (name == kIsaNames[i] && runs(i)) {
      current().store(static_cast<Isa>(i));
      return true;
    }
  return false;
}

}  // namespace seqserve::decoder
