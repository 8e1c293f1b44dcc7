// Paged attention for short query rows (decodes, speculative verification) on CPU.
//
// Built at first use by tachyon/kernels/native.py (g++ -O3 -march=native -fopenmp) and called through
// ctypes by tachyon/layers/attention/cpu_backend.py. Plain C ABI, no torch headers: it compiles in well
// under a second. -fopenmp links libgomp.so.1, which resolves to the copy torch already loaded, so the
// kernel and torch share one OpenMP thread pool.
//
// Why a kernel: the PyTorch path gathers every sequence's K and V out of the pool into padded tensors,
// then reads them again in two matmuls. Here each (row, KV head) task reads its keys and values once,
// in place through the block table, with the GQA group's query heads sharing every load:
//
//     scores[g][k] = scale * q[g] . K[k]            k < ctx (the positions this row may see)
//     out[g]       = sum_k softmax(scores[g])[k] * V[k]
//
// Vectors are GCC vector extensions of 16 floats (one AVX-512 register; split into narrower ones by
// the compiler elsewhere). bf16 is widened to float on load and rounded to nearest-even on store;
// all arithmetic is float32, as in the PyTorch path's softmax.
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float vfloat __attribute__((vector_size(64)));  // 16 lanes
typedef int32_t vint __attribute__((vector_size(64)));
typedef uint32_t vuint __attribute__((vector_size(64)));
typedef uint16_t vhalf __attribute__((vector_size(32)));

template <bool BF16>
static inline vfloat load16(const char *p) {
    if constexpr (BF16) {
        vhalf h;
        memcpy(&h, p, sizeof h);
        return (vfloat)(__builtin_convertvector(h, vuint) << 16);
    } else {
        vfloat v;
        memcpy(&v, p, sizeof v);
        return v;
    }
}

template <bool BF16>
static inline void store16(char *p, vfloat v) {
    if constexpr (BF16) {
        vuint u = (vuint)v;
        u += 0x7FFF + ((u >> 16) & 1);  // round to nearest even
        vhalf h = __builtin_convertvector(u >> 16, vhalf);
        memcpy(p, &h, sizeof h);
    } else {
        memcpy(p, &v, sizeof v);
    }
}

static inline float horizontal_sum(vfloat v) {  // a shuffle tree, not 15 scalar adds
    v += __builtin_shuffle(v, (vint){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (vint){4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
    v += __builtin_shuffle(v, (vint){2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
    v += __builtin_shuffle(v, (vint){1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});
    return v[0];
}

// e^x, 16 lanes, for the softmax's x <= 0: Cephes' expf (range reduction by ln 2, a degree-6
// polynomial, 2^n built in the exponent bits), within 2 ulp of libm; libm's expf would be called once per
// score. Arguments below -87 give e^-87 (1.6e-38), a zero to the softmax sum beside its largest term, 1.
static inline vfloat exp16(vfloat x) {
    x = x < -87.f ? -87.f : x;
    const vfloat shifted = x * 1.44269504088896341f + 12582912.f;  // 1.5 * 2^23: rounds x / ln 2 to n
    const vfloat n = shifted - 12582912.f;
    const vfloat r = x - n * 0.693359375f - n * -2.12194440e-4f;
    vfloat p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    const vint two_to_n = ((vint)shifted - 0x4B400000 + 127) << 23;
    return p * (vfloat)two_to_n;
}

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

// One (row, KV head): G query heads of D dims against the row's first ctx keys and values, walked block
// by block through the table (no division per position).
template <bool BF16, int G, int D>
static void attend_one(const Args &a, int r, int h, float *scores) {
    constexpr int C = D / 16;
    constexpr size_t E = BF16 ? 2 : 4;
    const size_t slot_bytes = (size_t)a.num_kv_heads * D * E, head_offset = (size_t)h * D * E;
    const int row = a.rows[r], ctx = a.row_ctx[r], bs = a.block_size;
    const int32_t *table = a.block_tables + (size_t)a.row_seq[r] * a.max_blocks;

    vfloat q[G][C];
    const char *q_row = a.q + ((size_t)row * a.q_row_stride + (size_t)h * G * D) * E;
    for (int g = 0; g < G; g++)
        for (int c = 0; c < C; c++) q[g][c] = load16<BF16>(q_row + ((size_t)g * D + c * 16) * E) * a.scale;

    for (int first = 0; first < ctx; first += bs) {
        const char *keys = a.k_cache + (size_t)table[first / bs] * bs * slot_bytes + head_offset;
        const int n = ctx - first < bs ? ctx - first : bs;
        float *s = scores + first;
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            vfloat k[4][C];
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < C; c++) k[i][c] = load16<BF16>(keys + (j + i) * slot_bytes + c * 16 * E);
            for (int g = 0; g < G; g++) {
                vfloat dot[4];
                for (int i = 0; i < 4; i++) {
                    dot[i] = q[g][0] * k[i][0];
                    for (int c = 1; c < C; c++) dot[i] += q[g][c] * k[i][c];
                }
                horizontal_sum4(dot[0], dot[1], dot[2], dot[3], s + g * ctx + j);
            }
        }
        for (; j < n; j++) {
            vfloat k[C];
            for (int c = 0; c < C; c++) k[c] = load16<BF16>(keys + j * slot_bytes + c * 16 * E);
            for (int g = 0; g < G; g++) {
                vfloat dot = q[g][0] * k[0];
                for (int c = 1; c < C; c++) dot += q[g][c] * k[c];
                s[g * ctx + j] = horizontal_sum(dot);
            }
        }
    }

    float inv_sum[G];
    for (int g = 0; g < G; g++) {
        float *s = scores + g * ctx, peak = -FLT_MAX;
        for (int k = 0; k < ctx; k++) peak = s[k] > peak ? s[k] : peak;
        vfloat sum = {};
        int k = 0;
        for (; k + 16 <= ctx; k += 16) {
            vfloat x;
            memcpy(&x, s + k, sizeof x);
            const vfloat e = exp16(x - peak);
            memcpy(s + k, &e, sizeof e);
            sum += e;
        }
        float total = horizontal_sum(sum);
        if (k < ctx) {  // the tail: lanes past ctx are computed on zeros, never stored or summed
            vfloat x = {};
            memcpy(&x, s + k, sizeof(float) * (ctx - k));
            const vfloat e = exp16(x - peak);
            memcpy(s + k, &e, sizeof(float) * (ctx - k));
            for (int i = 0; i < ctx - k; i++) total += e[i];
        }
        inv_sum[g] = 1.f / total;
    }

    vfloat acc[G][C] = {};
    for (int first = 0; first < ctx; first += bs) {
        const char *values = a.v_cache + (size_t)table[first / bs] * bs * slot_bytes + head_offset;
        const int n = ctx - first < bs ? ctx - first : bs;
        const float *p = scores + first;
        for (int j = 0; j < n; j++) {
            vfloat v[C];
            for (int c = 0; c < C; c++) v[c] = load16<BF16>(values + j * slot_bytes + c * 16 * E);
            for (int g = 0; g < G; g++)
                for (int c = 0; c < C; c++) acc[g][c] += p[g * ctx + j] * v[c];
        }
    }

    char *out_row = a.out + ((size_t)row * a.num_kv_heads * G + (size_t)h * G) * D * E;
    for (int g = 0; g < G; g++)
        for (int c = 0; c < C; c++) store16<BF16>(out_row + ((size_t)g * D + c * 16) * E, acc[g][c] * inv_sum[g]);
}

template <bool BF16, int G, int D>
static void attend_rows(const Args &a, int num_rows, int max_ctx, int num_threads) {
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * (size_t)G * (max_ctx > 0 ? max_ctx : 1));
#pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < (long)num_rows * a.num_kv_heads; task++)
            attend_one<BF16, G, D>(a, (int)(task / a.num_kv_heads), (int)(task % a.num_kv_heads), scores);
        free(scores);
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

// Returns 0, or 1 for a shape tachyon_supports() refuses (nothing is written then).
int tachyon_paged_attention(const void *q, long q_row_stride, const void *kv_cache, long num_slots, void *out,
                            const int32_t *block_tables, int max_blocks, const int32_t *rows,
                            const int32_t *row_seq, const int32_t *row_ctx, int num_rows, int max_ctx,
                            int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, int bf16,
                            int num_threads) {
    const size_t elem = bf16 ? 2 : 4;
    Args a{(const char *)q, (const char *)kv_cache,
           (const char *)kv_cache + (size_t)num_slots * num_kv_heads * head_dim * elem, (char *)out,
           block_tables, rows, row_seq, row_ctx, q_row_stride, num_kv_heads, block_size, max_blocks, scale};
    const int group = num_heads / num_kv_heads;
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
