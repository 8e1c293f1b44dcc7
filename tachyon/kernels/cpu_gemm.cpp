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

// Elements of the packed form of an [N, K] weight.
long tachyon_gemm_packed_size(long N, long K, int bf16) {
#if TACHYON_GEMM_F32
    const long step = k_step(bf16);
    return (N + PANEL - 1) / PANEL * ((K + step - 1) / step) * PANEL * step;
#else
    return 0;
#endif
}

// w [N, K] (row-major, bf16 or float32) -> packed, tachyon_gemm_packed_size(N, K, bf16) elements:
// packed[p][kk][c][e] = W[p * PANEL + c][kk * step + e], zero past N and K.
void tachyon_gemm_pack(const void *w, long N, long K, int bf16, void *packed) {
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
}
