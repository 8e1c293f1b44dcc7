// The AMX tile unit (Sapphire Rapids and later), shared by the CPU kernels that use it: the GEMM and paged
// attention. TACHYON_AMX is 1 where the compiler targets it (-march=native on such a CPU); tests build
// without it (-mno-amx-tile) to cover the vector paths on the same machine.
#pragma once
#if defined(__AVX512BF16__) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define TACHYON_AMX 1
#include <immintrin.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace amx {

// Whether this process may use the tiles: Linux hands out their 8 KB of state only to a process that asks
// (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), once.
static inline bool enabled() {
    static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return ok;
}

// Every tile 16 rows x 64 bytes, on the calling thread (each thread configures its own; _tile_release()
// when done hands the state back).
static inline void configure() {
    struct alignas(64) {
        uint8_t palette = 1, start_row = 0, reserved[14] = {};
        uint16_t colsb[16] = {};
        uint8_t rows[16] = {};
    } config;
    for (int i = 0; i < 8; i++) config.rows[i] = 16, config.colsb[i] = 64;
    _tile_loadconfig(&config);
}

// A prefetch into L1 that GCC keeps: it deletes loops whose only effect is __builtin_prefetch.
static inline void prefetch(const char *line) { asm volatile("prefetcht0 %0" : : "m"(*line)); }

}  // namespace amx
#else
#define TACHYON_AMX 0
#endif
