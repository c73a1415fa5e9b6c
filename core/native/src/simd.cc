#include "simd.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>

namespace seqserve::decoder {

const char* const kIsaNames[3] = {"baseline", "avx2", "avx512"};

namespace {

const char* const* const kNames = kIsaNames;

Isa best_on_cpu() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// the CPU's best, capped by SEQSERVE_NATIVE_ISA (any case; an unknown name caps nothing)
Isa from_environment() {
  const Isa best = best_on_cpu();
  const char* cap = std::getenv("SEQSERVE_NATIVE_ISA");
  if (cap == nullptr) return best;
  std::string name(cap);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (int i = 0; i < 3; ++i)
    if (name == kNames[i]) return static_cast<Isa>(std::min(i, static_cast<int>(best)));
  return best;
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> level{from_environment()};
  return level;
}

}  // namespace

Isa isa() { return current().load(std::memory_order_relaxed); }

const char* isa_name() { return kNames[static_cast<int>(isa())]; }

std::vector<std::string> isas() {
  std::vector<std::string> out;
  for (int i = static_cast<int>(best_on_cpu()); i >= 0; --i) out.emplace_back(kNames[i]);
  return out;
}

bool use_isa(const std::string& name) {
  if (name == "auto") {
    current().store(from_environment());
    return true;
  }
  for (int i = 0; i <= static_cast<int>(best_on_cpu()); ++i)
    if (name == kNames[i]) {
      current().store(static_cast<Isa>(i));
      return true;
    }
  return false;
}

}  // namespace seqserve::decoder
