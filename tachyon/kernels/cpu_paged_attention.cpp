// Paged attention on CPU for every kind of query row: decodes, speculative verification, prefill chunks.
//
// Built at first use by tachyon/kernels/native.py (g++ -O3 -march=native -fopenmp) and called through
// ctypes by tachyon/layers/attention/cpu_backend.py. Plain C ABI, no torch headers: it compiles in well
// under a second. -fopenmp links libgomp.so.1, which resolves to the copy torch already loaded, so the
// kernel and torch share one OpenMP thread pool.
//
// Why a kernel: the PyTorch path gathers every sequence's K and V out of the pool into padded tensors,
// then reads them again in two matmuls. Here each task (a tile of one sequence's consecutive rows and a
// run of its KV heads) reads its keys and values once, in place through the block table, whole blocks
// front to back, with the tile's rows and the GQA group's query heads sharing every load:
//
//     scores[g][k] = scale * q[g] . K[k]            k < ctx (the positions this row may see)
//     out[g]       = sum_k softmax(scores[g])[k] * V[k]
//
// Vectors are GCC vector extensions of 16 floats (one AVX-512 register; split into narrower ones by
// the compiler elsewhere). Without AVX512_BF16, bf16 is widened to float on load and all arithmetic is
// float32; with it, see TACHYON_DPBF16 below. Outputs are rounded to nearest-even on store.
#include <float.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#include "cpu_amx.h"
#include "cpu_vector.h"

struct Args {
    const char *q;            // [*, Hq, D], row stride q_row_stride elements
    const char *k_cache;      // [num_slots, Hkv, D]
    const char *v_cache;      // [num_slots, Hkv, D]
    char *out;                // [*, Hq, D] contiguous
    const int32_t *block_tables;  // [B, max_blocks]
    const int32_t *rows;      // [R] which rows of q / out to compute
    const int32_t *row_seq;   // [R] the row's sequence (its block-table row)
    const int32_t *row_ctx;   // [R] how many positions the row attends to
    long q_row_stride;
    int num_kv_heads, block_size, max_blocks;
    float scale;
};

// Four horizontal sums at once: lane 0 of the result is the sum of a0, lane 1 of a1, ... (a shuffle tree
// over the four vectors costs half of four separate trees).
static inline void horizontal_sum4(vfloat a0, vfloat a1, vfloat a2, vfloat a3, float *out) {
    const vint lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const vint hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const vfloat x01 = __builtin_shuffle(a0, a1, lo) + __builtin_shuffle(a0, a1, hi);  // a0 in 0-7, a1 in 8-15
    const vfloat x23 = __builtin_shuffle(a2, a3, lo) + __builtin_shuffle(a2, a3, hi);
    const vint even = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const vint odd = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    vfloat y = __builtin_shuffle(x01, x23, even) + __builtin_shuffle(x01, x23, odd);  // four lanes each
    y += __builtin_shuffle(y, (vint){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    y += __builtin_shuffle(y, (vint){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    out[0] = y[0], out[1] = y[4], out[2] = y[8], out[3] = y[12];
}

// Pulls the next block toward the core while the arithmetic runs on this one: blocks sit anywhere in the
// pool, so the hardware prefetcher cannot guess the next one. The lines are asked for a few at a time,
// between the arithmetic's own loads, and into L2 (prefetcht1). Measured on decode attention of 64 rows
// from DRAM (2-core EPYC), against one burst of L1 prefetches per block: L2 instead of L1 took 20% off,
// spreading the requests another 15%.
struct Prefetcher {
    const char *line, *end;
    inline void lines(int n) {
        for (; n > 0 && line < end; n--, line += 64) __builtin_prefetch(line, 0, 2);
    }
    inline void rest() { lines(1 << 30); }
};

// bf16 on CPUs with AVX512_BF16 multiplies bf16 pairs straight into float32 sums (vdpbf16ps): no widening
// of keys and values, half the multiply instructions. The products are exact, the sums float32; the
// softmax weights are rounded to bf16 for the value sum, as a bf16 attention's matmul rounds them.
#if defined(__AVX512BF16__)
#include <immintrin.h>
#define TACHYON_DPBF16 1
#else
#define TACHYON_DPBF16 0
#endif

// s[g * stride + j] = q[g] . K[j] (unscaled) for the n keys of one KV head at `keys`
template <bool BF16, int G, int D>
static inline void score_keys(const char *q, const char *keys, size_t slot_bytes, int n, float *s, int stride,
                              Prefetcher &ahead) {
    constexpr size_t E = BF16 ? 2 : 4;
#if TACHYON_DPBF16
    if constexpr (BF16) {
        constexpr int C = D / 32;  // 32 bf16 per register
        __m512bh qv[G][C];
        for (int g = 0; g < G; g++)
            for (int c = 0; c < C; c++) qv[g][c] = (__m512bh)_mm512_loadu_si512(q + ((size_t)g * D + c * 32) * E);
        auto dot = [&](int g, const __m512bh *k) {
            __m512 sum = _mm512_dpbf16_ps(_mm512_setzero_ps(), qv[g][0], k[0]);
            for (int c = 1; c < C; c++) sum = _mm512_dpbf16_ps(sum, qv[g][c], k[c]);
            return (vfloat)sum;
        };
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            ahead.lines(8);
            __m512bh k[4][C];
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < C; c++)
                    k[i][c] = (__m512bh)_mm512_loadu_si512(keys + (j + i) * slot_bytes + c * 32 * E);
            for (int g = 0; g < G; g++)
                horizontal_sum4(dot(g, k[0]), dot(g, k[1]), dot(g, k[2]), dot(g, k[3]), s + g * stride + j);
        }
        for (; j < n; j++) {
            __m512bh k[C];
            for (int c = 0; c < C; c++) k[c] = (__m512bh)_mm512_loadu_si512(keys + j * slot_bytes + c * 32 * E);
            for (int g = 0; g < G; g++) s[g * stride + j] = horizontal_sum(dot(g, k));
        }
        return;
    }
#endif
    constexpr int C = D / 16;
    vfloat qv[G][C];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < C; c++) qv[g][c] = load16<BF16>(q + ((size_t)g * D + c * 16) * E);
    auto dot = [&](int g, const vfloat *k) {
        vfloat sum = qv[g][0] * k[0];
        for (int c = 1; c < C; c++) sum += qv[g][c] * k[c];
        return sum;
    };
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        ahead.lines(8);
        vfloat k[4][C];
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < C; c++) k[i][c] = load16<BF16>(keys + (j + i) * slot_bytes + c * 16 * E);
        for (int g = 0; g < G; g++)
            horizontal_sum4(dot(g, k[0]), dot(g, k[1]), dot(g, k[2]), dot(g, k[3]), s + g * stride + j);
    }
    for (; j < n; j++) {
        vfloat k[C];
        for (int c = 0; c < C; c++) k[c] = load16<BF16>(keys + j * slot_bytes + c * 16 * E);
        for (int g = 0; g < G; g++) s[g * stride + j] = horizontal_sum(dot(g, k));
    }
}

// s[k] <- e^(scale * (s[k] - max s)) over k < n; returns 1 / their sum. The maximum ignores NaN scores.
static inline float softmax_weights(float *s, int n, float scale) {
    vfloat peaks = {};  // lane i: the maximum of s[i], s[i + 16], ...
    peaks -= FLT_MAX;
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        vfloat x;
        memcpy(&x, s + k, sizeof x);
        peaks = x > peaks ? x : peaks;
    }
    if (k < n) {
        const vfloat x = load_floats(s + k, n - k, -FLT_MAX);
        peaks = x > peaks ? x : peaks;
    }
    const float peak = horizontal_max(peaks);
    vfloat sum = {};
    for (k = 0; k + 16 <= n; k += 16) {
        vfloat x;
        memcpy(&x, s + k, sizeof x);
        const vfloat e = exp16((x - peak) * scale);
        memcpy(s + k, &e, sizeof e);
        sum += e;
    }
    float total = horizontal_sum(sum);
    if (k < n) {  // the tail: lanes past n are computed on zeros, never stored or summed
        const vfloat e = exp16((load_floats(s + k, n - k, 0.f) - peak) * scale);
        store_floats(s + k, e, n - k);
        for (int i = 0; i < n - k; i++) total += e[i];
    }
    return 1.f / total;
}

// The value sum of one KV head's G query heads over n positions of a block: acc[g] += p[g][j] * V[j].
// The dpbf16 path keeps acc in an interleaved lane order (see finish_values).
template <bool BF16, int G, int D>
static inline void accumulate_values(const float *p, int stride, const char *values, size_t slot_bytes, int n,
                                     vfloat (*acc)[D / 16], Prefetcher &ahead) {
    constexpr size_t E = BF16 ? 2 : 4;
    constexpr int C = D / 16;
    vfloat sum[G][C];
    memcpy(sum, acc, sizeof sum);
#if TACHYON_DPBF16
    if constexpr (BF16) {
        // two positions at once: lane i of a register holds (V[j][d], V[j+1][d]) and the weights
        // (p[j], p[j+1]); unpacklo/hi interleave within 128-bit lanes, so sum[g][2c] holds dims
        // 32c + 8L + {0..3} and sum[g][2c+1] dims 32c + 8L + {4..7}, for lane group L = 0..3
        auto pair = [&](int g, int j, bool both) {
            const __m128 w = _mm_set_ps(0.f, 0.f, both ? p[g * stride + j + 1] : 0.f, p[g * stride + j]);
            const __m128bh w16 = _mm_cvtneps_pbh(w);
            uint32_t bits;
            memcpy(&bits, &w16, sizeof bits);
            return (__m512bh)_mm512_set1_epi32((int)bits);
        };
        for (int j = 0; j < n; j += 2) {
            ahead.lines(4);
            const bool both = j + 1 < n;  // an odd tail pairs V[j] with itself at weight 0
            const char *v0 = values + j * slot_bytes, *v1 = both ? v0 + slot_bytes : v0;
            __m512bh lo[D / 32], hi[D / 32];
            for (int c = 0; c < D / 32; c++) {
                const __m512i a = _mm512_loadu_si512(v0 + c * 32 * E), b = _mm512_loadu_si512(v1 + c * 32 * E);
                lo[c] = (__m512bh)_mm512_unpacklo_epi16(a, b);
                hi[c] = (__m512bh)_mm512_unpackhi_epi16(a, b);
            }
            for (int g = 0; g < G; g++) {
                const __m512bh w = pair(g, j, both);
                for (int c = 0; c < D / 32; c++) {
                    sum[g][2 * c] = (vfloat)_mm512_dpbf16_ps((__m512)sum[g][2 * c], w, lo[c]);
                    sum[g][2 * c + 1] = (vfloat)_mm512_dpbf16_ps((__m512)sum[g][2 * c + 1], w, hi[c]);
                }
            }
        }
        memcpy(acc, sum, sizeof sum);
        return;
    }
#endif
    for (int j = 0; j < n; j++) {
        ahead.lines(2);
        vfloat v[C];
        for (int c = 0; c < C; c++) v[c] = load16<BF16>(values + j * slot_bytes + c * 16 * E);
        for (int g = 0; g < G; g++)
            for (int c = 0; c < C; c++) sum[g][c] += p[g * stride + j] * v[c];
    }
    memcpy(acc, sum, sizeof sum);
}

// acc (in accumulate_values' lane order) * inv_sum -> the output row of one query head
template <bool BF16, int D>
static inline void finish_values(const vfloat *acc, float inv_sum, char *out) {
    constexpr size_t E = BF16 ? 2 : 4;
#if TACHYON_DPBF16
    if constexpr (BF16) {
        const vint first = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
        const vint second = {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
        for (int c = 0; c < D / 32; c++) {
            store16<BF16>(out + (c * 32) * E, __builtin_shuffle(acc[2 * c], acc[2 * c + 1], first) * inv_sum);
            store16<BF16>(out + (c * 32 + 16) * E, __builtin_shuffle(acc[2 * c], acc[2 * c + 1], second) * inv_sum);
        }
        return;
    }
#endif
    for (int c = 0; c < D / 16; c++) store16<BF16>(out + c * 16 * E, acc[c] * inv_sum);
}

// Up to this many consecutive rows of one sequence (a prefill chunk's, a verification's) make one tile: they
// walk the same blocks, so each block comes from memory once per tile and from L1 for the tile's other rows,
// where rows attended alone each streamed the whole context from L2 or L3.
static constexpr int TILE_ROWS = 8;

// Rows [r0, r0 + num_rows) of one sequence against KV heads [h0, h1): G query heads per KV head, D dims, each
// row over its first row_ctx keys and values, walked block by block through the table. A block's slots hold
// every KV head side by side, so a task covering all heads reads whole blocks front to back. Each row's
// result is computed in the same order whatever tile it is in. `scores` holds num_rows * (h1 - h0) * G *
// max_ctx floats, `acc` num_rows * (h1 - h0) * G * D / 16 vectors.
template <bool BF16, int G, int D>
static void attend_tile(const Args &a, int r0, int num_rows, int h0, int h1, float *scores, vfloat *acc) {
    constexpr size_t E = BF16 ? 2 : 4;
    constexpr int C = D / 16;
    const size_t slot_bytes = (size_t)a.num_kv_heads * D * E, block_bytes = a.block_size * slot_bytes;
    const int bs = a.block_size, heads = h1 - h0;
    const int32_t *table = a.block_tables + (size_t)a.row_seq[r0] * a.max_blocks;
    const int32_t *ctx = a.row_ctx + r0;
    int max_ctx = 0;
    for (int j = 0; j < num_rows; j++) max_ctx = ctx[j] > max_ctx ? ctx[j] : max_ctx;
    auto q_head = [&](int j, int h) {
        return a.q + ((size_t)a.rows[r0 + j] * a.q_row_stride + (size_t)h * G * D) * E;
    };
    auto head_scores = [&](int j, int h) {  // [G][max_ctx]
        return scores + ((size_t)j * heads + h - h0) * G * max_ctx;
    };
    auto head_acc = [&](int j, int h) { return (vfloat(*)[C])(acc + ((size_t)j * heads + h - h0) * G * C); };
    auto rows_in = [&](int j, int i) { return ctx[j] - i * bs < bs ? ctx[j] - i * bs : bs; };  // in block i

    // The task reads its key blocks, then its value blocks: read number s of 2 * num_blocks. While the
    // arithmetic runs on read s, read s + AHEAD comes in, each head's work asking for its share of the lines.
    // Two reads ahead, not one: decode attention of 64 rows from DRAM (2-core EPYC) took 9% less time.
    constexpr int AHEAD = 2;
    const int num_blocks = (max_ctx + bs - 1) / bs;
    auto block = [&](const char *cache, int i) { return cache + (size_t)table[i] * block_bytes; };
    auto read = [&](int s) -> const char * {  // null past the last
        return s < num_blocks ? block(a.k_cache, s) : s < 2 * num_blocks ? block(a.v_cache, s - num_blocks) : nullptr;
    };
    auto share = [&](const char *next, int h) {
        const size_t bytes = next ? block_bytes / heads : 0;
        return Prefetcher{next + (h - h0) * bytes, next + (h - h0 + 1) * bytes};
    };

    for (int i = 0; i < num_blocks; i++) {
        const char *keys = block(a.k_cache, i);
        const char *next = read(i + AHEAD);
        for (int h = h0; h < h1; h++) {
            Prefetcher ahead = share(next, h);
            for (int j = 0; j < num_rows; j++)
                if (rows_in(j, i) > 0)
                    score_keys<BF16, G, D>(q_head(j, h), keys + (size_t)h * D * E, slot_bytes, rows_in(j, i),
                                           head_scores(j, h) + i * bs, max_ctx, ahead);
            ahead.rest();
        }
    }
    float inv_sum[TILE_ROWS][8][G];
    for (int j = 0; j < num_rows; j++)
        for (int h = h0; h < h1; h++)
            for (int g = 0; g < G; g++)
                inv_sum[j][h - h0][g] = softmax_weights(head_scores(j, h) + g * max_ctx, ctx[j], a.scale);

    memset(acc, 0, sizeof(vfloat) * num_rows * heads * G * C);
    for (int i = 0; i < num_blocks; i++) {
        const char *values = block(a.v_cache, i);
        const char *next = read(num_blocks + i + AHEAD);
        for (int h = h0; h < h1; h++) {
            Prefetcher ahead = share(next, h);
            for (int j = 0; j < num_rows; j++)
                if (rows_in(j, i) > 0)
                    accumulate_values<BF16, G, D>(head_scores(j, h) + i * bs, max_ctx, values + (size_t)h * D * E,
                                                  slot_bytes, rows_in(j, i), head_acc(j, h), ahead);
            ahead.rest();
        }
    }
    for (int j = 0; j < num_rows; j++) {
        char *out_row = a.out + (size_t)a.rows[r0 + j] * a.num_kv_heads * G * D * E;
        for (int h = h0; h < h1; h++)
            for (int g = 0; g < G; g++)
                finish_values<BF16, D>(head_acc(j, h)[g], inv_sum[j][h - h0][g],
                                       out_row + (size_t)(h * G + g) * D * E);
    }
}


// On CPUs with AMX, bf16 rows run on the tile unit instead: there vdpbf16ps retires one per two cycles,
// which left decode attention bound by arithmetic rather than by memory. Per KV head, a tile's query rows
// (up to 16: its rows x the GQA group, row q = j * G + g) go through three steps:
//
//   scores:  S^T [16 keys][16 q] = K_block [16 keys][D] . Q^T, Q^T held in D / 32 tiles of (dim pair, q)
//   softmax: each q's scores (moved out of the tile's columns) as on the vector path, weights rounded to bf16
//   values:  O [16 q][64 dims] += P [16 q][32 keys] . V [32 keys][64 dims], V re-laid in key pairs
//
// A row's output depends only on its own query, scores and weights (the tile unit computes each output
// element from its own row and column) and sums its keys 32 at a time in order: the same bits in any tile.
// Weights past a row's context are zero, and value rows past the tile's longest context are zeroed (a
// cache slot never written may hold NaN), so padding adds exact zeros.
#if TACHYON_AMX
namespace amx {
// Per-thread scratch, sized for the call's longest context.
struct Scratch {
    uint16_t *weights;  // [16][ctx32] bf16 softmax weights, zero past each row's context
    long ctx32;
    alignas(64) float tiles[4][16][16];         // scores of two runs; then the output's four tiles
    alignas(64) uint16_t q_pairs[4][16][32];     // Q^T: [dim chunk][dim pair][q][2]
    alignas(64) uint16_t v_pairs[2][4][16][32];  // V of two chunks: [16-dim group][key pair][dim][2]
};

// G (query heads per KV head) is a run-time value here: only D shapes the tiles, and one build per group
// size (and inlining it into each caller) would double the library's compile time.
template <int D>
__attribute__((noinline)) static void attend_tile(const Args &a, int G, int r0, int num_rows, int h0, int h1, float *scores, Scratch &w) {
    static_assert(D % 64 == 0 && D <= 128, "tiles take 64-dim halves of a head");
    constexpr size_t E = 2;
    const size_t slot_bytes = (size_t)a.num_kv_heads * D * E, block_bytes = a.block_size * slot_bytes;
    const int bs = a.block_size, nq = num_rows * G;
    const int32_t *table = a.block_tables + (size_t)a.row_seq[r0] * a.max_blocks;
    const int32_t *ctx = a.row_ctx + r0;
    int max_ctx = 0;
    for (int j = 0; j < num_rows; j++) max_ctx = ctx[j] > max_ctx ? ctx[j] : max_ctx;
    auto slot = [&](const char *cache, int k) {  // position k's slot; k + i for i < 16 - k % 16 follow it
        return cache + (size_t)table[k / bs] * block_bytes + (size_t)(k % bs) * slot_bytes;
    };
    const vint column = {0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240};

    // What the task reads, in order, in units of 16 positions of one head: per head its keys, then its
    // values. Unit u + AHEAD is asked for while unit u is worked on: blocks sit anywhere in the pool and a
    // head's rows are strided, so the hardware prefetcher cannot guess them. (Measured on decode rows: whole
    // blocks for all the task's heads at once, while the first head works, took 20% longer; 8 or 16 units
    // ahead instead of 4, the same.)
    constexpr int AHEAD = 4;
    const int key_units = (max_ctx + 15) / 16, chunks = (max_ctx + 31) / 32, units = key_units + 2 * chunks;
    auto fetch = [&](int u) {
        const int h = h0 + u / units, i = u % units;
        if (h >= h1) return;
        const char *cache = i < key_units ? a.k_cache : a.v_cache;
        const int k0 = (i < key_units ? i : i - key_units) * 16;
        if (k0 >= max_ctx) return;
        const char *run = slot(cache, k0) + (size_t)h * D * E;
        for (int k = 0; k < 16 && k0 + k < max_ctx; k++)
            for (int line = 0; line < D * (int)E; line += 64) prefetch(run + k * slot_bytes + line);
    };
    for (int u = 0; u < AHEAD; u++) fetch(u);

    for (int h = h0; h < h1; h++) {
        const int first_unit = (h - h0) * units;
        // Q^T in (dim pair, q) tiles: q_pairs[c][p][q][e] = query q's dim 32c + 2p + e. As 32-bit words (a
        // dim pair each) that is word 16c + p of row q going to word 16p + q of tile c: a scatter per 16.
        memset(w.q_pairs, 0, sizeof(w.q_pairs[0]) * (D / 32));
        const __m512i stride16 = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                    _mm512_set1_epi32(16));
        for (int j = 0; j < num_rows; j++)
            for (int g = 0; g < G; g++) {
                const char *q = a.q + ((size_t)a.rows[r0 + j] * a.q_row_stride + (size_t)(h * G + g) * D) * E;
                for (int c = 0; c < D / 32; c++)
                    _mm512_i32scatter_epi32(w.q_pairs[c], _mm512_add_epi32(stride16, _mm512_set1_epi32(j * G + g)),
                                            _mm512_loadu_si512(q + c * 64), 4);
            }
        _tile_loadd(2, w.q_pairs[0], 64);
        _tile_loadd(3, w.q_pairs[1], 64);
        if constexpr (D == 128) {
            _tile_loadd(4, w.q_pairs[2], 64);
            _tile_loadd(5, w.q_pairs[3], 64);
        }
        // scores, 16 keys at a time (the block size is a multiple of 16: a run of 16 slots is in one block).
        // Each run's tile is read out one run later: a vector load of what a tile store just wrote stalls
        // until the store leaves the store buffer, and so does a tile load of vector stores (V pairs below).
        auto take_scores = [&](int k0) {  // run k0's tile, its columns to the score rows
            const __mmask16 keep = (__mmask16)((1u << (max_ctx - k0 < 16 ? max_ctx - k0 : 16)) - 1);
            const float *tile = &w.tiles[k0 / 16 % 2][0][0];
            for (int q = 0; q < nq; q++)
                _mm512_mask_storeu_ps(scores + (size_t)q * max_ctx + k0, keep,
                                      _mm512_mask_i32gather_ps(_mm512_setzero_ps(), keep, (__m512i)(column + q), tile, 4));
        };
        for (int k0 = 0; k0 < max_ctx; k0 += 16) {
            fetch(first_unit + k0 / 16 + AHEAD);
            const char *keys = slot(a.k_cache, k0) + (size_t)h * D * E;
            _tile_zero(0);
            for (int c = 0; c < D / 32; c++) {
                _tile_loadd(1, keys + c * 64, slot_bytes);
                switch (c) {  // tile numbers are immediates
                    case 0: _tile_dpbf16ps(0, 1, 2); break;
                    case 1: _tile_dpbf16ps(0, 1, 3); break;
                    case 2: _tile_dpbf16ps(0, 1, 4); break;
                    default: _tile_dpbf16ps(0, 1, 5); break;
                }
            }
            _tile_stored(0, w.tiles[k0 / 16 % 2], 64);
            if (k0) take_scores(k0 - 16);
        }
        take_scores((max_ctx - 1) / 16 * 16);
        // softmax per query row, weights to bf16, zero past the row's context (up to the 32-key chunk)
        float inv_sum[16];
        for (int j = 0; j < num_rows; j++)
            for (int g = 0; g < G; g++) {
                const int q = j * G + g;
                float *s = scores + (size_t)q * max_ctx;
                inv_sum[q] = softmax_weights(s, ctx[j], a.scale);
                uint16_t *p = w.weights + (size_t)q * w.ctx32;
                int k = 0;
                for (; k + 16 <= ctx[j]; k += 16) store16<true>((char *)(p + k), load_floats(s + k, 16, 0.f));
                if (k < ctx[j]) store16<true>((char *)(p + k), load_floats(s + k, ctx[j] - k, 0.f)), k += 16;
                for (; k < chunks * 32; k += 16) memset(p + k, 0, 32);
            }
        // values, a 64-dim half of the head at a time: O[q][d] in tiles 0-3, P in 4, V pairs in 5
        for (int half = 0; half < D / 64; half++) {
            for (int t = 0; t < 4; t++) switch (t) {
                    case 0: _tile_zero(0); break;
                    case 1: _tile_zero(1); break;
                    case 2: _tile_zero(2); break;
                    default: _tile_zero(3); break;
                }
            // V rows k, k + 1 interleaved: v_pairs[ch % 2][t][p][d][e] = V[32 ch + 2p + e][64 half + 16 t + d],
            // multiplied one chunk later
            const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                                                38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
            const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
            const size_t dims = ((size_t)h * D + half * 64) * E;  // this half of the head, in a slot
            auto pair_values = [&](int ch) {
                const char *run0 = slot(a.v_cache, ch * 32) + dims;  // keys 32 ch .. + 15
                const char *run1 = ch * 32 + 16 < max_ctx ? slot(a.v_cache, ch * 32 + 16) + dims : run0;
                uint16_t(*pairs)[16][32] = w.v_pairs[ch % 2];
                for (int p = 0; p < 16; p++) {
                    const int k = ch * 32 + 2 * p;
                    __m512i x[2] = {}, y[2] = {};  // 64 dims of V[k], V[k + 1]; zero past the longest context
                    if (k < max_ctx) {
                        const char *v = (p < 8 ? run0 : run1) + (size_t)(2 * p % 16) * slot_bytes;
                        x[0] = _mm512_loadu_si512(v), x[1] = _mm512_loadu_si512(v + 64);
                        if (k + 1 < max_ctx)
                            y[0] = _mm512_loadu_si512(v + slot_bytes), y[1] = _mm512_loadu_si512(v + slot_bytes + 64);
                    }
                    _mm512_store_si512(pairs[0][p], _mm512_permutex2var_epi16(x[0], lo, y[0]));
                    _mm512_store_si512(pairs[1][p], _mm512_permutex2var_epi16(x[0], hi, y[0]));
                    _mm512_store_si512(pairs[2][p], _mm512_permutex2var_epi16(x[1], lo, y[1]));
                    _mm512_store_si512(pairs[3][p], _mm512_permutex2var_epi16(x[1], hi, y[1]));
                }
            };
            auto multiply = [&](int ch) {
                uint16_t(*pairs)[16][32] = w.v_pairs[ch % 2];
                _tile_loadd(4, w.weights + ch * 32, w.ctx32 * E);
                _tile_loadd(5, pairs[0], 64);
                _tile_dpbf16ps(0, 4, 5);
                _tile_loadd(5, pairs[1], 64);
                _tile_dpbf16ps(1, 4, 5);
                _tile_loadd(5, pairs[2], 64);
                _tile_dpbf16ps(2, 4, 5);
                _tile_loadd(5, pairs[3], 64);
                _tile_dpbf16ps(3, 4, 5);
            };
            for (int ch = 0; ch < chunks; ch++) {
                if (half == 0)
                    fetch(first_unit + key_units + 2 * ch + AHEAD), fetch(first_unit + key_units + 2 * ch + AHEAD + 1);
                pair_values(ch);
                if (ch) multiply(ch - 1);
            }
            multiply(chunks - 1);
            _tile_stored(0, w.tiles[0], 64);
            _tile_stored(1, w.tiles[1], 64);
            _tile_stored(2, w.tiles[2], 64);
            _tile_stored(3, w.tiles[3], 64);
            for (int t = 0; t < 4; t++) {
                for (int j = 0; j < num_rows; j++)
                    for (int g = 0; g < G; g++) {
                        const int q = j * G + g;
                        char *out = a.out + ((size_t)a.rows[r0 + j] * a.num_kv_heads * G * D + (size_t)(h * G + g) * D +
                                             half * 64 + t * 16) * E;
                        vfloat o;
                        memcpy(&o, w.tiles[t][q], sizeof o);
                        store16<true>(out, o * inv_sum[q]);
                    }
            }
        }
    }
}
}  // namespace amx
#endif

// Tasks are (tile, run of KV heads): tiles of up to TILE_ROWS rows and runs of up to 8 heads when there is
// work enough to keep every thread busy, else smaller ones (a short chunk or a lone decode still spreads
// over the threads).
template <bool BF16, int G, int D>
static void attend_rows(const Args &a, int num_rows, int max_ctx, int num_threads) {
#if TACHYON_AMX
    const bool on_amx = BF16 && a.block_size % 16 == 0 && amx::enabled();
#else
    const bool on_amx = false;
#endif
    const int most_rows = on_amx ? 16 / G : TILE_ROWS;  // a tile's query rows fill at most one AMX tile
    const int tile_rows = std::max(1, std::min(most_rows, num_rows / (4 * num_threads)));
    std::vector<int> tiles;  // first row of each tile, then num_rows
    for (int r = 0; r < num_rows; r++)
        if (r == 0 || a.row_seq[r] != a.row_seq[r - 1] || r - tiles.back() == tile_rows) tiles.push_back(r);
    const long num_tiles = (long)tiles.size();
    tiles.push_back(num_rows);
    int heads_per_task = 1;
    if (num_tiles >= 4 * num_threads)
        for (int n = 8; n > 1 && heads_per_task == 1; n--)
            if (a.num_kv_heads % n == 0) heads_per_task = n;
    const int tasks_per_tile = a.num_kv_heads / heads_per_task;
    const size_t tile_vectors = (size_t)tile_rows * heads_per_task * G;  // score rows and accumulators
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * tile_vectors * (max_ctx > 0 ? max_ctx : 1));
        vfloat *acc = (vfloat *)aligned_alloc(sizeof(vfloat), sizeof(vfloat) * tile_vectors * (D / 16));
#if TACHYON_AMX
        amx::Scratch *scratch = nullptr;
        if (on_amx) {
            scratch = (amx::Scratch *)aligned_alloc(64, sizeof(amx::Scratch));
            scratch->ctx32 = (max_ctx + 31) / 32 * 32;
            scratch->weights = (uint16_t *)aligned_alloc(64, 16 * scratch->ctx32 * sizeof(uint16_t) + 64);
            amx::configure();
        }
#endif
#pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < num_tiles * tasks_per_tile; task++) {
            const long t = task / tasks_per_tile;
            const int h0 = (int)(task % tasks_per_tile) * heads_per_task;
#if TACHYON_AMX
            if (on_amx) {
                if constexpr (BF16)
                    amx::attend_tile<D>(a, G, tiles[t], tiles[t + 1] - tiles[t], h0, h0 + heads_per_task, scores,
                                        *scratch);
                continue;
            }
#endif
            attend_tile<BF16, G, D>(a, tiles[t], tiles[t + 1] - tiles[t], h0, h0 + heads_per_task, scores, acc);
        }
#if TACHYON_AMX
        if (on_amx) {
            _tile_release();
            free(scratch->weights);
            free(scratch);
        }
#endif
        free(scores);
        free(acc);
    }
}

#define SHAPES(X) X(1, 64) X(2, 64) X(3, 64) X(4, 64) X(5, 64) X(6, 64) X(7, 64) X(8, 64) \
                  X(1, 128) X(2, 128) X(3, 128) X(4, 128) X(5, 128) X(6, 128) X(7, 128) X(8, 128)

extern "C" {

// Whether this build has a kernel for `group` query heads per KV head of `head_dim` dims.
int tachyon_supports(int group, int head_dim) {
#define SUPPORTED(g, d) if (group == g && head_dim == d) return 1;
    SHAPES(SUPPORTED)
    return 0;
}

// Whether bf16 runs on vdpbf16ps (then the kernel outruns SDPA on long prefill chunks too).
int tachyon_fast_bf16(void) { return TACHYON_DPBF16; }

// Writes the step's num_tokens new keys and values (rows of num_kv_heads * head_dim elements, `key_row_stride`
// and `value_row_stride` elements apart) into their cache slots, then attends the `num_rows` rows: one call
// where index_copy_ cost two more of about 25 us each per layer. Returns 0, or 1 for a shape
// tachyon_supports() refuses (nothing is written then).
int tachyon_paged_attention(const void *q, long q_row_stride, const void *key, long key_row_stride,
                            const void *value, long value_row_stride, const int64_t *slot_mapping, int num_tokens,
                            void *kv_cache, long num_slots, void *out, const int32_t *block_tables, int max_blocks,
                            const int32_t *rows, const int32_t *row_seq, const int32_t *row_ctx, int num_rows,
                            int max_ctx, int num_heads, int num_kv_heads, int head_dim, int block_size, float scale,
                            int bf16, int num_threads) {
    const int group = num_heads / num_kv_heads;
    if (!tachyon_supports(group, head_dim)) return 1;
    const size_t elem = bf16 ? 2 : 4, slot_bytes = (size_t)num_kv_heads * head_dim * elem;
    char *k_cache = (char *)kv_cache, *v_cache = k_cache + (size_t)num_slots * slot_bytes;
    for (int t = 0; t < num_tokens; t++) {
        memcpy(k_cache + slot_mapping[t] * slot_bytes, (const char *)key + t * key_row_stride * elem, slot_bytes);
        memcpy(v_cache + slot_mapping[t] * slot_bytes, (const char *)value + t * value_row_stride * elem, slot_bytes);
    }
    Args a{(const char *)q, k_cache, v_cache, (char *)out, block_tables, rows, row_seq, row_ctx, q_row_stride,
           num_kv_heads, block_size, max_blocks, scale};
#define DISPATCH(g, d)                                                                      \
    if (group == g && head_dim == d) {                                                      \
        if (bf16) attend_rows<true, g, d>(a, num_rows, max_ctx, num_threads);               \
        else attend_rows<false, g, d>(a, num_rows, max_ctx, num_threads);                   \
        return 0;                                                                           \
    }
    SHAPES(DISPATCH)
    return 1;
}
}
