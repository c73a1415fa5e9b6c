// Element-wise loops are built three times (AVX-512, AVX2 and the x86-64 baseline) and the
// best the CPU runs is chosen when the library loads: GCC's target_clones.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SEQSERVE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SEQSERVE_CLONES
#endif
