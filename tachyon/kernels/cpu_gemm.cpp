// The dense layers' GEMM on AVX-512 CPUs: y [M, N] = x [M, K] @ W [N, K]^T (+ bias), all bf16 (on CPUs
// with AVX512_BF16) or all float32.
//
// Built by tachyon/kernels/native.py (-march=native) and called through ctypes by cpu_gemm.py. Why not
// oneDNN, which torch ships: at decode sizes its GEMMs stall on weights that come from DRAM (each step
// reads every layer's weights once, far more than the caches hold): on a 2-core Zen 4, bf16 ones run at
// 290-370 GFLOP/s there where this kernel keeps 370-400; at prefill sizes the two are on par.
//
// The weight is packed once at load into panels of PANEL output columns. A panel holds, for each group
// of `step` input columns (a bf16 pair for vdpbf16ps, one float32 column for an FMA), the PANEL columns'
// values side by side,
//
//     packed[p][kk][c][e] = W[p * PANEL + c][kk * step + e]        (zero past N and K)
//
// so a panel is one contiguous stream the hardware prefetcher follows, and one 64-byte load gives 16
// columns' worth for a broadcast of x. A micro-tile is MR rows of x by one panel: MR * NB accumulators
// stay in registers over the whole of K.
//
// On CPUs with AMX (Sapphire Rapids and later), bf16 runs on the tile unit instead, in a layout of its own
// (see `amx` below): there vdpbf16ps retires one per two cycles and a core does ~70 GFLOP/s, where one
// tile multiply does 16 x 16 x 32 products in 16 cycles.
//
// Each output is summed over k in one fixed order, whatever M, the tile it falls in or the thread that
// computes it: a row's result is the same bits in any batch (batch-invariant mode relies on this).
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define TACHYON_GEMM_F32 1
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define TACHYON_GEMM_BF16 1
#endif
#include <stdlib.h>

#include "cpu_amx.h"

#if TACHYON_GEMM_F32
static constexpr int NB = 3;            // 16-column vectors per panel
static constexpr int PANEL = 16 * NB;   // output columns per panel
static constexpr int MR = 8;            // rows of x per micro-tile (MR * NB = 24 accumulators)

// rows r < R of x against one panel: y[r][0:cols] = x[r] . W[col] (+ bias[col]). bf16 takes the inputs
// k, k + 1 as a pair per vdpbf16ps; float32 takes one k per FMA.
template <bool BF16, int R>
static void tile(const void *x_, long ldx, long K, const void *panel_, const void *bias_, void *y_, long ldy,
                 int cols) {
    __m512 acc[R][NB];
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();
#if TACHYON_GEMM_BF16
    if constexpr (BF16) {
        const uint16_t *x = (const uint16_t *)x_, *panel = (const uint16_t *)panel_;
        const long pairs = K / 2;
        auto step = [&](long kp, auto x_pair) {
            __m512bh w[NB];
            for (int b = 0; b < NB; b++) w[b] = (__m512bh)_mm512_loadu_si512(panel + (kp * PANEL + b * 16) * 2);
            for (int r = 0; r < R; r++) {
                const __m512bh a = (__m512bh)_mm512_set1_epi32(x_pair(r));
                for (int b = 0; b < NB; b++) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], a, w[b]);
            }
        };
        for (long kp = 0; kp < pairs; kp++)
            step(kp, [&](int r) {
                int32_t pair;
                memcpy(&pair, x + r * ldx + 2 * kp, sizeof pair);
                return pair;
            });
        if (K & 1)  // the last column alone: its pair's second weight is zero, and x past the row is not read
            step(pairs, [&](int r) { return (int32_t)x[r * ldx + K - 1]; });
        const uint16_t *bias = (const uint16_t *)bias_;
        uint16_t *y = (uint16_t *)y_;
        for (int b = 0; b < NB && b * 16 < cols; b++) {
            const int n = cols - b * 16 < 16 ? cols - b * 16 : 16;
            const __mmask16 mask = (__mmask16)((1u << n) - 1);
            __m512 add = _mm512_setzero_ps();
            if (bias)
                add = _mm512_castsi512_ps(
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, bias + b * 16)), 16));
            for (int r = 0; r < R; r++)
                _mm256_mask_storeu_epi16(y + r * ldy + b * 16, mask,
                                         (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(acc[r][b], add)));
        }
        return;
    }
#endif
    if constexpr (!BF16) {
        const float *x = (const float *)x_, *panel = (const float *)panel_, *bias = (const float *)bias_;
        for (long k = 0; k < K; k++) {
            __m512 w[NB];
            for (int b = 0; b < NB; b++) w[b] = _mm512_loadu_ps(panel + k * PANEL + b * 16);
            for (int r = 0; r < R; r++) {
                const __m512 a = _mm512_set1_ps(x[r * ldx + k]);
                for (int b = 0; b < NB; b++) acc[r][b] = _mm512_fmadd_ps(a, w[b], acc[r][b]);
            }
        }
        float *y = (float *)y_;
        for (int b = 0; b < NB && b * 16 < cols; b++) {
            const int n = cols - b * 16 < 16 ? cols - b * 16 : 16;
            const __mmask16 mask = (__mmask16)((1u << n) - 1);
            const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + b * 16) : _mm512_setzero_ps();
            for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(y + r * ldy + b * 16, mask, _mm512_add_ps(acc[r][b], add));
        }
    }
}

template <bool BF16, int R>
static void tail_rows(const char *x, long ldx, long K, const void *panel, const void *bias, char *y, long ldy,
                      int cols, int rows) {
    if constexpr (R > 0) {
        if (rows == R) return tile<BF16, R>(x, ldx, K, panel, bias, y, ldy, cols);
        tail_rows<BF16, R - 1>(x, ldx, K, panel, bias, y, ldy, cols, rows);
    }
}

// k values side by side in a packed row: a bf16 pair per vdpbf16ps, one float per FMA
static inline long k_step(int bf16) { return bf16 ? 2 : 1; }

template <bool BF16>
static void gemm(const char *x, long ldx, const char *packed, const char *bias, char *y, long ldy, long M, long N,
                 long K, int num_threads) {
    constexpr long E = BF16 ? 2 : 4;
    const long step = k_step(BF16), groups = (K + step - 1) / step;
    const long panels = (N + PANEL - 1) / PANEL, panel_bytes = groups * step * PANEL * E;
    const long splits_wanted = (4L * num_threads + panels - 1) / panels;
    const long row_tiles = (M + MR - 1) / MR;
    const long splits = splits_wanted < row_tiles ? splits_wanted : row_tiles;
    const long rows_per_task = (row_tiles + splits - 1) / splits * MR;
    const long num_tasks = panels * ((M + rows_per_task - 1) / rows_per_task);
    const bool worth_threads = N * K >= (1L << 16) || M * N * K >= (1L << 20);  // a weight to stream, or work
#pragma omp parallel for num_threads(num_threads) schedule(static) if (worth_threads)
    for (long task = 0; task < num_tasks; task++) {
        const long p = task % panels, m0 = task / panels * rows_per_task;
        const long m1 = m0 + rows_per_task < M ? m0 + rows_per_task : M;
        const int cols = (int)(N - p * PANEL < PANEL ? N - p * PANEL : PANEL);
        const char *panel = packed + p * panel_bytes, *panel_bias = bias ? bias + p * PANEL * E : nullptr;
        long m = m0;
        for (; m + MR <= m1; m += MR)
            tile<BF16, MR>(x + m * ldx * E, ldx, K, panel, panel_bias, y + (m * ldy + p * PANEL) * E, ldy, cols);
        if (m < m1)
            tail_rows<BF16, MR - 1>(x + m * ldx * E, ldx, K, panel, panel_bias, y + (m * ldy + p * PANEL) * E, ldy,
                                    cols, (int)(m1 - m));
    }
}
#endif

#if TACHYON_AMX
// bf16 on the AMX tile unit. Eight tile registers of 16 rows x 64 bytes: four accumulate a 32 x 32 block
// of y in float32 (C[r][t]: rows 16r.., columns 16t..), two hold 16 rows x 32 inputs of x (A[r]), two
// hold the weights for 16 columns x 32 inputs (B[t]) in the pair-interleaved form the tile multiply takes:
//
//     packed[p][kc][t][kp][c][e] = W[p * 32 + 16 t + c][kc * 32 + 2 kp + e]        (zero past N and K)
//
// so each 32-column panel is one contiguous stream, 2 KB per 32 inputs. x is read in place (rows ldx
// apart) when K is a multiple of 32 and M of 16; otherwise through a zero-padded copy, since a tile load
// reads whole 16-row x 64-byte blocks. Each output adds its 32-input chunks in order, so a row's result
// does not depend on M or on the rows beside it.
namespace amx {
constexpr int T = 16;        // rows of a tile, columns of an output tile
constexpr int KC = 32;       // bf16 inputs per tile row
constexpr int COLS = 2 * T;  // output columns per panel
constexpr int ROW_CHUNK = 256;  // rows of x a thread keeps in L2 while it walks the panels
// The first rows over a panel ask for its weights this many 2 KB chunks ahead, into the next panel at its
// end: a decode step streams every weight from DRAM, and the tile loads alone waited on each one (64-row
// GEMMs of a layer's shapes 20% faster with it; 4, 8 and 16 chunks within noise).
constexpr int AHEAD = 8;

static long panels(long N) { return (N + COLS - 1) / COLS; }
static long chunks(long K) { return (K + KC - 1) / KC; }
static long packed_size(long N, long K) { return panels(N) * chunks(K) * COLS * KC; }

// Weight row (output column) n of panel p's tile t, column c. With `half` (a multiple of 16) the two halves
// of W pair up instead: tile 0 holds rows p * 16.. of the first half, tile 1 the same rows of the second
// (gate and up of a gate/up projection, so that SiLU(gate) * up is one panel's output).
static long row_of(long p, int t, int c, long half) { return half ? t * half + p * T + c : p * COLS + t * T + c; }

static void pack(const uint16_t *w, long N, long K, long half, uint16_t *packed) {
    const long nk = chunks(K);
    for (long p = 0; p < panels(N); p++)
        for (long kc = 0; kc < nk; kc++)
            for (int t = 0; t < 2; t++)
                for (int kp = 0; kp < KC / 2; kp++)
                    for (int c = 0; c < T; c++)
                        for (int e = 0; e < 2; e++) {
                            const long n = row_of(p, t, c, half), k = kc * KC + 2 * kp + e;
                            *packed++ = n < N && k < K ? w[n * K + k] : 0;
                        }
}

// A block's float32 sums wait here while the next block multiplies: a vector load of what a tile store
// just wrote stalls until the store leaves the store buffer (~300 ns a block, half the time of a 32 x 32
// block over 256 inputs), so each block's rounding and writing runs one block late.
struct Pending {
    alignas(64) float out[4][T][T];  // C[r][t] at out[2r + t]
    uint16_t *y[2] = {};             // where tile column t goes; y[0] null: nothing pending
    const uint16_t *bias[2];         // (or null)
    const float *silu;               // PyTorch's SiLU of every bf16, by its bits: y[0] = SiLU(C[0]) * C[1]
    long ldy;
    int rows, cols[2];

    void finish() {
        if (!y[0]) return;
        auto sums = [&](int t, int i, __mmask16 mask) {  // row i of tile column t (+ bias), rounded to bf16
            __m512 add = _mm512_setzero_ps();
            if (bias[t])
                add = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, bias[t])), 16));
            return _mm512_cvtneps_pbh(_mm512_add_ps(_mm512_load_ps(out[2 * (i / T) + t][i % T]), add));
        };
        auto widen = [](__m256bh h) { return _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16); };
        for (int t = 0; t < 2 && cols[t] > 0; t++) {
            const __mmask16 mask = (__mmask16)((1u << cols[t]) - 1);
            for (int i = 0; i < rows; i++) {
                if (!silu) {
                    _mm256_mask_storeu_epi16(y[t] + i * ldy, mask, (__m256i)sums(t, i, mask));
                    continue;
                }
                // as silu_and_mul after the plain GEMM: gate and up rounded to bf16, SiLU looked up by the
                // gate's bits, the product rounded once more
                const __m512i gate = _mm512_cvtepu16_epi32((__m256i)sums(0, i, mask));
                const __m512 act = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, gate, silu, 4);
                const __m512 up = _mm512_castsi512_ps(widen(sums(1, i, mask)));
                _mm256_mask_storeu_epi16(y[0] + i * ldy, mask, (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(act, up)));
            }
            if (silu) break;
        }
        y[0] = nullptr;
    }
};

// C[r][t] (tile 2r + t), rows [m, m + 16 R) against one panel, over all of K, stored to `to`.
template <int R>
static void block(const uint16_t *x, long ldx, long nk, const uint16_t *panel, bool fetch_ahead, Pending &to) {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (R == 2) {
        _tile_zero(2);
        _tile_zero(3);
    }
    for (long kc = 0; kc < nk; kc++) {
        const uint16_t *b = panel + kc * COLS * KC;
        if (fetch_ahead)
            for (int line = 0; line < COLS * KC * 2; line += 64)
                prefetch((const char *)(b + AHEAD * COLS * KC) + line);
        _tile_loadd(6, b, 64);
        _tile_loadd(7, b + T * KC, 64);
        _tile_loadd(4, x + kc * KC, ldx * 2);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if constexpr (R == 2) {
            _tile_loadd(5, x + T * ldx + kc * KC, ldx * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, to.out[0], 64);
    _tile_stored(1, to.out[1], 64);
    if constexpr (R == 2) {
        _tile_stored(2, to.out[2], 64);
        _tile_stored(3, to.out[3], 64);
    }
}

// y = x @ W^T (+ bias), W packed by `pack` with the same `half`; with `silu` (then `half` too), y [M, half] =
// SiLU(x @ W_first^T) * (x @ W_second^T).
static void gemm(const uint16_t *x, long ldx, const uint16_t *packed, const uint16_t *bias, uint16_t *y, long ldy,
                 long M, long N, long K, long half, const float *silu, int num_threads) {
    const long nk = chunks(K), np = panels(N), m16 = (M + T - 1) / T * T;
    uint16_t *padded = nullptr;
    if (K % KC || M % T) {  // tile loads read whole 16 x 32 blocks: copy x into zeros
        padded = (uint16_t *)calloc((size_t)m16 * nk * KC, sizeof(uint16_t));
        for (long m = 0; m < M; m++) memcpy(padded + m * nk * KC, x + m * ldx, K * sizeof(uint16_t));
        x = padded, ldx = nk * KC;
    }
    const long row_chunks = (m16 + ROW_CHUNK - 1) / ROW_CHUNK, num_tasks = row_chunks * np;
    const bool worth_threads = N * K >= (1L << 16) || M * N * K >= (1L << 20);
#pragma omp parallel num_threads(num_threads) if (worth_threads)
    {
        configure();
        Pending pending[2];
        int next = 0;
#pragma omp for schedule(static)
        for (long task = 0; task < num_tasks; task++) {  // row chunk by row chunk, its panels in turn
            const long p = task % np, m0 = task / np * ROW_CHUNK;
            const long m1 = m0 + ROW_CHUNK < m16 ? m0 + ROW_CHUNK : m16;
            const uint16_t *panel = packed + p * nk * COLS * KC;
            for (long m = m0; m < m1; m += 2 * T) {
                Pending &to = pending[next];
                if (m + T < m1)
                    block<2>(x + m * ldx, ldx, nk, panel, m == m0, to);
                else
                    block<1>(x + m * ldx, ldx, nk, panel, m == m0, to);
                for (int t = 0; t < 2; t++) {
                    const long first = row_of(p, t, 0, half), end = half ? (t + 1) * half : N;  // this column's
                    const long out = silu ? p * T : first;  // a SiLU panel writes 16 columns, tile 0's
                    to.y[t] = y + m * ldy + out;
                    to.bias[t] = bias ? bias + first : nullptr;
                    to.cols[t] = (int)(end - first < T ? (end > first ? end - first : 0) : T);
                }
                to.silu = silu, to.ldy = ldy;
                to.rows = (int)((M - m) < 2 * T ? M - m : 2 * T);
                next ^= 1;
                pending[next].finish();
            }
        }
        pending[next ^ 1].finish();
        _tile_release();
    }
    free(padded);
}
}  // namespace amx
#endif

// Whether bf16 runs on the tile unit (the CPU has AMX and the kernel granted its use).
static bool bf16_on_amx() {
#if TACHYON_AMX
    return amx::enabled();
#else
    return false;
#endif
}

extern "C" {

// Whether this build has the kernel for bf16 (the CPU has AVX512_BF16) or float32 (AVX-512).
int tachyon_gemm_supports(int bf16) {
#if TACHYON_GEMM_BF16
    if (bf16) return 1;
#endif
#if TACHYON_GEMM_F32
    if (!bf16) return 1;
#endif
    return 0;
}

// Whether bf16 runs on the AMX tile unit here.
int tachyon_gemm_uses_amx(void) { return bf16_on_amx(); }

// Elements of the packed form of an [N, K] weight.
long tachyon_gemm_packed_size(long N, long K, int bf16) {
#if TACHYON_AMX
    if (bf16 && bf16_on_amx()) return amx::packed_size(N, K);
#endif
#if TACHYON_GEMM_F32
    const long step = k_step(bf16);
    return (N + PANEL - 1) / PANEL * ((K + step - 1) / step) * PANEL * step;
#else
    return 0;
#endif
}

// w [N, K] (row-major, bf16 or float32) -> packed, tachyon_gemm_packed_size(N, K, bf16) elements:
// packed[p][kk][c][e] = W[p * PANEL + c][kk * step + e], zero past N and K (on AMX, amx::pack's layout).
void tachyon_gemm_pack(const void *w, long N, long K, int bf16, void *packed) {
#if TACHYON_AMX
    if (bf16 && bf16_on_amx()) return amx::pack((const uint16_t *)w, N, K, 0, (uint16_t *)packed);
#endif
#if TACHYON_GEMM_F32
    const long step = k_step(bf16), groups = (K + step - 1) / step, panels = (N + PANEL - 1) / PANEL;
    for (long p = 0; p < panels; p++)
        for (long kk = 0; kk < groups; kk++)
            for (int c = 0; c < PANEL; c++)
                for (long e = 0; e < step; e++) {
                    const long n = p * PANEL + c, k = kk * step + e;
                    const long at = ((p * groups + kk) * PANEL + c) * step + e;
                    if (bf16) ((uint16_t *)packed)[at] = n < N && k < K ? ((const uint16_t *)w)[n * K + k] : 0;
                    else ((float *)packed)[at] = n < N && k < K ? ((const float *)w)[n * K + k] : 0.f;
                }
#endif
}

// y [M, N] (rows ldy apart) = x [M, K] (rows ldx apart) @ W^T (+ bias [N], or null), W packed by
// tachyon_gemm_pack, all bf16 or all float32. Tasks are (panel, run of rows): whole columns of panels
// when there are panels enough for every thread, else the rows are split too.
void tachyon_gemm(const void *x, long ldx, const void *packed, const void *bias, void *y, long ldy, long M, long N,
                  long K, int bf16, int num_threads) {
    if (M <= 0 || N <= 0 || !tachyon_gemm_supports(bf16)) return;
#if TACHYON_AMX
    if (bf16 && bf16_on_amx())
        return amx::gemm((const uint16_t *)x, ldx, (const uint16_t *)packed, (const uint16_t *)bias, (uint16_t *)y,
                         ldy, M, N, K, 0, nullptr, num_threads);
#endif
#if TACHYON_GEMM_F32
#if TACHYON_GEMM_BF16
    if (bf16)
        return gemm<true>((const char *)x, ldx, (const char *)packed, (const char *)bias, (char *)y, ldy, M, N, K,
                          num_threads);
#endif
    gemm<false>((const char *)x, ldx, (const char *)packed, (const char *)bias, (char *)y, ldy, M, N, K,
                num_threads);
#endif
}

// A gate/up projection on AMX (bf16): w [2 * half, K], half a multiple of 16, packed so each panel pairs
// gate and up columns (tachyon_gemm_packed_size(2 * half, K, 1) elements). Returns 0 where AMX does not run.
int tachyon_gemm_pack_halves(const void *w, long half, long K, void *packed) {
#if TACHYON_AMX
    if (bf16_on_amx() && half % 16 == 0) return amx::pack((const uint16_t *)w, 2 * half, K, half, (uint16_t *)packed), 1;
#endif
    return 0;
}

// On weights packed by tachyon_gemm_pack_halves: y [M, 2 * half] = x @ W^T (+ bias) in the usual column
// order, or with `silu` (65536 floats: SiLU of each bf16, by its bits) y [M, half] = SiLU(gate) * up, the
// same bits as silu_and_mul on the plain output.
void tachyon_gemm_halves(const void *x, long ldx, const void *packed, const void *bias, void *y, long ldy, long M,
                         long half, long K, const float *silu, int num_threads) {
#if TACHYON_AMX
    if (M > 0 && bf16_on_amx())
        amx::gemm((const uint16_t *)x, ldx, (const uint16_t *)packed, (const uint16_t *)bias, (uint16_t *)y, ldy, M,
                  2 * half, K, half, silu, num_threads);
#endif
}
}
