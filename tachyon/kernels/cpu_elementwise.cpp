// The decoder's elementwise layers on CPU, one pass each: RMSNorm with its residual add, rotary
// embedding, SiLU-and-mul. PyTorch runs each as four to eight ops, every one dispatched from Python and
// writing a temporary; at decode sizes that dispatch, not arithmetic, is their cost. Also the greedy
// argmax over logit rows, which torch computes at a twentieth of the speed of its own max.
//
// Built by tachyon/kernels/native.py with -ffp-contract=off, and written to round exactly where the
// PyTorch layers (and HF transformers) round: to bf16 after every op a bf16 tensor op would store,
// a * b + c as two roundings. Rotary is therefore bit-identical to PyTorch, and so is bf16 SiLU (a table of
// PyTorch's own results); RMSNorm's sum of squares and float32 SiLU's exp are computed in another order /
// with another polynomial, so they may differ from PyTorch's in the last bit of a float32.
//
// Rows are spread over OpenMP threads (torch's pool, see cpu_paged_attention.cpp) once a call has
// enough elements to pay for waking them.
#include "cpu_vector.h"

static constexpr long PARALLEL_MIN_ELEMENTS = 1 << 14;

// n <= 16 elements at p as one vector (lanes past n are zero), and back
template <bool BF16>
static inline vfloat load_n(const char *p, int n) {
    if (n == 16) return load16<BF16>(p);
    char buf[64] = {};
    memcpy(buf, p, (size_t)n * (BF16 ? 2 : 4));
    return load16<BF16>(buf);
}

template <bool BF16>
static inline void store_n(char *p, vfloat v, int n) {
    if (n == 16) return store16<BF16>(p, v);
    char buf[64];
    store16<BF16>(buf, v);
    memcpy(p, buf, (size_t)n * (BF16 ? 2 : 4));
}

static inline vfloat load_float_n(const float *p, int n) { return load_n<false>((const char *)p, n); }

// what storing into a tensor of the layer's dtype does to a float result
template <bool BF16>
static inline vfloat as_dtype(vfloat v) {
    if constexpr (BF16) return bf16_round_trip(v);
    return v;
}

// HF's LlamaRMSNorm: s = x + residual (in the dtype), then weight * (s * rsqrt(mean(s^2) + eps)).to(dtype)
// with the statistics in float32.
template <bool BF16>
static void rms_norm_row(const char *x, const char *residual, const char *weight, char *out, char *residual_out,
                         int hidden, float eps) {
    constexpr int E = BF16 ? 2 : 4;
    vfloat squares = {};
    for (int i = 0; i < hidden; i += 16) {
        const int n = hidden - i < 16 ? hidden - i : 16;
        vfloat s = load_n<BF16>(x + i * E, n);
        if (residual) {
            s = as_dtype<BF16>(s + load_n<BF16>(residual + i * E, n));
            store_n<BF16>(residual_out + i * E, s, n);
        }
        squares += s * s;
    }
    const float inv_rms = 1.f / sqrtf(horizontal_sum(squares) / hidden + eps);
    const char *s_row = residual ? residual_out : x;
    for (int i = 0; i < hidden; i += 16) {
        const int n = hidden - i < 16 ? hidden - i : 16;
        const vfloat y = as_dtype<BF16>(load_n<BF16>(s_row + i * E, n) * inv_rms);
        store_n<BF16>(out + i * E, load_n<BF16>(weight + i * E, n) * y, n);
    }
}

// silu(gate) * up, gate and up the two halves of one row, silu stored in the dtype, then multiplied
// (PyTorch's silu and mul). bf16 looks silu up in `silu_table`, PyTorch's own silu of each of the 65536 bf16
// values: bit-identical to it, and at half the cost of the float32 path's x / (1 + e^-x).
template <bool BF16>
static void silu_and_mul_row(const char *gate_up, char *out, int size, const uint16_t *silu_table) {
    constexpr int E = BF16 ? 2 : 4;
    for (int i = 0; i < size; i += 16) {
        const int n = size - i < 16 ? size - i : 16;
        vfloat silu;
        if constexpr (BF16) {
            const uint16_t *gate = (const uint16_t *)gate_up + i;
            uint32_t bits[16] = {};
            if (n == 16)  // a fixed count, unrolled
                for (int j = 0; j < 16; j++) bits[j] = (uint32_t)silu_table[gate[j]] << 16;
            else
                for (int j = 0; j < n; j++) bits[j] = (uint32_t)silu_table[gate[j]] << 16;
            memcpy(&silu, bits, sizeof silu);
        } else {
            const vfloat g = load_n<BF16>(gate_up + i * E, n);
            silu = g / (1.f + exp16(-g));
        }
        store_n<BF16>(out + i * E, silu * load_n<BF16>(gate_up + (size + i) * E, n), n);
    }
}

// One head: out = x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1], cos and sin cast to
// the dtype first, each product and the sum stored in the dtype (HF's apply_rotary_pos_emb).
template <bool BF16>
static void rotary_head(const char *x, char *out, const float *cos, const float *sin, int head_dim) {
    constexpr int E = BF16 ? 2 : 4;
    const int half = head_dim / 2;
    for (int i = 0; i < half; i += 16) {
        const int n = half - i < 16 ? half - i : 16;
        const vfloat x1 = load_n<BF16>(x + i * E, n), x2 = load_n<BF16>(x + (half + i) * E, n);
        const vfloat c1 = as_dtype<BF16>(load_float_n(cos + i, n));
        const vfloat c2 = as_dtype<BF16>(load_float_n(cos + half + i, n));
        const vfloat s1 = as_dtype<BF16>(load_float_n(sin + i, n));
        const vfloat s2 = as_dtype<BF16>(load_float_n(sin + half + i, n));
        store_n<BF16>(out + i * E, as_dtype<BF16>(x1 * c1) + as_dtype<BF16>(-x2 * s1), n);
        store_n<BF16>(out + (half + i) * E, as_dtype<BF16>(x2 * c2) + as_dtype<BF16>(x1 * s2), n);
    }
}

template <bool BF16>
static void rms_norm(const char *x, long x_stride, const char *residual, const char *weight, char *out,
                     char *residual_out, long rows, int hidden, float eps, int num_threads) {
    constexpr int E = BF16 ? 2 : 4;
#pragma omp parallel for num_threads(num_threads) if (rows * hidden >= PARALLEL_MIN_ELEMENTS)
    for (long r = 0; r < rows; r++)
        rms_norm_row<BF16>(x + r * x_stride * E, residual ? residual + r * hidden * E : nullptr, weight,
                           out + r * hidden * E, residual ? residual_out + r * hidden * E : nullptr, hidden, eps);
}

template <bool BF16>
static void silu_and_mul(const char *gate_up, long stride, char *out, long rows, int size, const uint16_t *silu_table,
                         int num_threads) {
    constexpr int E = BF16 ? 2 : 4;
#pragma omp parallel for num_threads(num_threads) if (rows * size >= PARALLEL_MIN_ELEMENTS)
    for (long r = 0; r < rows; r++)
        silu_and_mul_row<BF16>(gate_up + r * stride * E, out + r * size * E, size, silu_table);
}

template <bool BF16>
static void rotary(const char *q, long q_stride, char *q_out, int q_heads, const char *k, long k_stride,
                   char *k_out, int k_heads, const int64_t *positions, const float *cos, const float *sin,
                   long tokens, int head_dim, int num_threads) {
    constexpr int E = BF16 ? 2 : 4;
    const int heads = q_heads + k_heads;
#pragma omp parallel for num_threads(num_threads) if (tokens * heads * head_dim >= PARALLEL_MIN_ELEMENTS)
    for (long t = 0; t < tokens; t++) {
        const float *c = cos + positions[t] * head_dim, *s = sin + positions[t] * head_dim;
        for (int h = 0; h < q_heads; h++)
            rotary_head<BF16>(q + (t * q_stride + (long)h * head_dim) * E,
                              q_out + (t * q_heads + h) * (long)head_dim * E, c, s, head_dim);
        for (int h = 0; h < k_heads; h++)
            rotary_head<BF16>(k + (t * k_stride + (long)h * head_dim) * E,
                              k_out + (t * k_heads + h) * (long)head_dim * E, c, s, head_dim);
    }
}

// The index of the first maximum of a row, as torch.argmax: a NaN counts as the maximum (the first one
// wins). Each lane keeps the first index of its own maximum; across lanes the smallest index of the
// largest value wins.
template <bool BF16>
static int64_t argmax_row(const char *x, long n) {
    constexpr int E = BF16 ? 2 : 4;
    vfloat best = {};
    best -= INFINITY;
    vint best_index = {}, index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, nan = {};
    long i = 0;
    for (; i + 16 <= n; i += 16, index += 16) {
        const vfloat v = load16<BF16>(x + i * E);
        const vint greater = v > best;
        best = greater ? v : best;
        best_index = greater ? index : best_index;
        nan |= v != v;
    }
    float top = -INFINITY;
    int64_t top_index = 0;
    for (int lane = 0; lane < 16; lane++)
        if (best[lane] > top || (best[lane] == top && best_index[lane] < top_index))
            top = best[lane], top_index = best_index[lane];
    bool any_nan = false;
    for (int lane = 0; lane < 16; lane++) any_nan |= nan[lane] != 0;
    for (; i < n; i++) {  // the tail, after every vector index
        const float v = load_n<BF16>(x + i * E, 1)[0];
        any_nan |= v != v;
        if (v > top) top = v, top_index = i;
    }
    if (any_nan)
        for (long j = 0; j < n; j++) {
            const float v = load_n<BF16>(x + j * E, 1)[0];
            if (v != v) return j;
        }
    return top_index;
}

extern "C" {

// out[r] = argmax of row r of x [rows, n], rows `stride` elements apart
void tachyon_argmax(const void *x, long stride, int64_t *out, long rows, long n, int bf16, int num_threads) {
    const int E = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(num_threads) if (rows * n >= PARALLEL_MIN_ELEMENTS)
    for (long r = 0; r < rows; r++)
        out[r] = bf16 ? argmax_row<true>((const char *)x + r * stride * E, n)
                      : argmax_row<false>((const char *)x + r * stride * E, n);
}

// out[r] = RMSNorm(x[r] (+ residual[r])); with a residual, residual_out[r] = x[r] + residual[r].
// x rows are x_stride elements apart; everything else is contiguous [rows, hidden].
void tachyon_rms_norm(const void *x, long x_stride, const void *residual, const void *weight, void *out,
                      void *residual_out, long rows, int hidden, float eps, int bf16, int num_threads) {
    if (bf16)
        rms_norm<true>((const char *)x, x_stride, (const char *)residual, (const char *)weight, (char *)out,
                       (char *)residual_out, rows, hidden, eps, num_threads);
    else
        rms_norm<false>((const char *)x, x_stride, (const char *)residual, (const char *)weight, (char *)out,
                        (char *)residual_out, rows, hidden, eps, num_threads);
}

// out [rows, size] = silu(gate_up[:, :size]) * gate_up[:, size:], gate_up rows stride elements apart;
// bf16 reads silu from silu_table [65536] (indexed by a value's bits), float32 computes it
void tachyon_silu_and_mul(const void *gate_up, long stride, void *out, long rows, int size,
                          const uint16_t *silu_table, int bf16, int num_threads) {
    if (bf16) silu_and_mul<true>((const char *)gate_up, stride, (char *)out, rows, size, silu_table, num_threads);
    else silu_and_mul<false>((const char *)gate_up, stride, (char *)out, rows, size, nullptr, num_threads);
}

// q_out [tokens, q_heads, head_dim], k_out likewise: q and k rotated by the float32 cos/sin tables'
// rows at `positions`; q and k are [tokens, heads, head_dim] with token rows q_stride / k_stride apart.
void tachyon_rotary(const void *q, long q_stride, void *q_out, int q_heads, const void *k, long k_stride,
                    void *k_out, int k_heads, const int64_t *positions, const float *cos, const float *sin,
                    long tokens, int head_dim, int bf16, int num_threads) {
    if (bf16)
        rotary<true>((const char *)q, q_stride, (char *)q_out, q_heads, (const char *)k, k_stride, (char *)k_out,
                     k_heads, positions, cos, sin, tokens, head_dim, num_threads);
    else
        rotary<false>((const char *)q, q_stride, (char *)q_out, q_heads, (const char *)k, k_stride, (char *)k_out,
                      k_heads, positions, cos, sin, tokens, head_dim, num_threads);
}
}
