// The dense layers' bf16 GEMM on CPUs with AVX512_BF16: y [M, N] = x [M, K] @ W [N, K]^T (+ bias).
//
// Built by tachyon/kernels/native.py (-march=native) and called through ctypes by cpu_gemm.py. Why not
// oneDNN, which torch ships: at decode sizes its GEMMs stall on weights that come from DRAM (each step
// reads every layer's weights once, far more than the caches hold), running at 240-330 GFLOP/s on a
// 2-core Zen 4 where this kernel keeps 400-420; from L3 and at prefill sizes it is still 3-10% ahead.
//
// The weight is packed once at load into panels of PANEL output columns: panel p holds, for each pair
// of input columns (2kp, 2kp + 1), the PANEL columns' two bf16 values side by side,
//
//     packed[p][kp][c][e] = W[p * PANEL + c][2 * kp + e]        (zero past N and K)
//
// so a panel is one contiguous stream the hardware prefetcher follows, and one 64-byte load gives the
// (k, k + 1) pairs of 16 columns that vdpbf16ps multiplies by a broadcast pair of x. A micro-tile is MR
// rows of x by one panel: MR * NB accumulators stay in registers over the whole of K.
//
// Each output is summed over k in one fixed order, whatever M, the tile it falls in or the thread that
// computes it: a row's result is the same bits in any batch (batch-invariant mode relies on this).
#include <stdint.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define TACHYON_GEMM 1
#include <immintrin.h>

static constexpr int NB = 3;            // 16-column vectors per panel
static constexpr int PANEL = 16 * NB;   // output columns per panel
static constexpr int MR = 8;            // rows of x per micro-tile (MR * NB = 24 accumulators)

// rows r < R of x against one panel: y[r][0:cols] = x[r] . W[col] (+ bias[col])
template <int R>
static void tile(const uint16_t *x, long ldx, long K, const uint16_t *panel, const uint16_t *bias, uint16_t *y,
                 long ldy, int cols) {
    __m512 acc[R][NB];
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();
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
}

template <int R>
static void tail_rows(const uint16_t *x, long ldx, long K, const uint16_t *panel, const uint16_t *bias, uint16_t *y,
                      long ldy, int cols, int rows) {
    if constexpr (R > 0) {
        if (rows == R) return tile<R>(x, ldx, K, panel, bias, y, ldy, cols);
        tail_rows<R - 1>(x, ldx, K, panel, bias, y, ldy, cols, rows);
    }
}
#endif

extern "C" {

// Whether this build has the kernel (the CPU has AVX512_BF16).
int tachyon_gemm_supported(void) {
#if TACHYON_GEMM
    return 1;
#else
    return 0;
#endif
}

// Elements of the packed form of an [N, K] weight.
long tachyon_gemm_packed_size(long N, long K) {
#if TACHYON_GEMM
    return (N + PANEL - 1) / PANEL * ((K + 1) / 2) * PANEL * 2;
#else
    return 0;
#endif
}

// w [N, K] bf16 (row-major) -> packed, tachyon_gemm_packed_size(N, K) elements.
void tachyon_gemm_pack(const uint16_t *w, long N, long K, uint16_t *packed) {
#if TACHYON_GEMM
    const long pairs = (K + 1) / 2, panels = (N + PANEL - 1) / PANEL;
    for (long p = 0; p < panels; p++)
        for (long kp = 0; kp < pairs; kp++)
            for (int c = 0; c < PANEL; c++)
                for (int e = 0; e < 2; e++) {
                    const long n = p * PANEL + c, k = 2 * kp + e;
                    packed[((p * pairs + kp) * PANEL + c) * 2 + e] = n < N && k < K ? w[n * K + k] : 0;
                }
#endif
}

// y [M, N] (rows ldy apart) = x [M, K] (rows ldx apart) @ W^T (+ bias [N], or null), W packed by
// tachyon_gemm_pack. Tasks are (panel, run of rows): whole columns of panels when there are panels enough
// for every thread, else the rows are split too.
void tachyon_gemm(const uint16_t *x, long ldx, const uint16_t *packed, const uint16_t *bias, uint16_t *y, long ldy,
                  long M, long N, long K, int num_threads) {
#if TACHYON_GEMM
    if (M <= 0 || N <= 0) return;
    const long panels = (N + PANEL - 1) / PANEL, panel_size = (K + 1) / 2 * PANEL * 2;
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
        const uint16_t *panel = packed + p * panel_size, *panel_bias = bias ? bias + p * PANEL : nullptr;
        long m = m0;
        for (; m + MR <= m1; m += MR)
            tile<MR>(x + m * ldx, ldx, K, panel, panel_bias, y + m * ldy + p * PANEL, ldy, cols);
        if (m < m1)
            tail_rows<MR - 1>(x + m * ldx, ldx, K, panel, panel_bias, y + m * ldy + p * PANEL, ldy, cols,
                              (int)(m1 - m));
    }
#endif
}
}
