// 16-lane float vectors (GCC vector extensions: one AVX-512 register, split into narrower ones by the
// compiler elsewhere) and their bf16 loads and stores, shared by the CPU kernels in this folder.
// tachyon/kernels/native.py hashes this header into every kernel's cache key.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// float -> bf16, round to nearest even as torch rounds (NaN stays NaN): one vcvtneps2bf16 where the CPU
// has AVX512_BF16, else integer arithmetic on the bits
static inline vhalf to_bf16(vfloat v) {
#if defined(__AVX512BF16__)
    const __m256bh h = _mm512_cvtneps_pbh((__m512)v);
    vhalf out;
    memcpy(&out, &h, sizeof out);
    return out;
#else
    const vuint u = (vuint)v;
    const vuint rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
    return __builtin_convertvector(v != v ? (vuint){} + 0x7FC0 : rounded, vhalf);
#endif
}

// v rounded to bf16 and widened back: what a bf16 tensor op stores
static inline vfloat bf16_round_trip(vfloat v) { return (vfloat)(__builtin_convertvector(to_bf16(v), vuint) << 16); }

template <bool BF16>
static inline void store16(char *p, vfloat v) {
    if constexpr (BF16) {
        const vhalf h = to_bf16(v);
        memcpy(p, &h, sizeof h);
    } else {
        memcpy(p, &v, sizeof v);
    }
}

// The first n (< 16) floats at p, the other lanes `fill`; and the first n lanes of v stored at p. Masked
// moves where the CPU has AVX-512: a memcpy of a length known only at run time is a call into libc.
static inline vfloat load_floats(const float *p, int n, float fill) {
#if defined(__AVX512F__)
    return (vfloat)_mm512_mask_loadu_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1), p);
#else
    vfloat v = {};
    v += fill;
    memcpy(&v, p, sizeof(float) * n);
    return v;
#endif
}

static inline void store_floats(float *p, vfloat v, int n) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#else
    memcpy(p, &v, sizeof(float) * n);
#endif
}

static inline float horizontal_max(vfloat v) {  // of lanes that hold no NaN
    auto fold = [&](vint order) {
        const vfloat w = __builtin_shuffle(v, order);
        v = w > v ? w : v;
    };
    fold((vint){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    fold((vint){4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
    fold((vint){2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
    fold((vint){1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});
    return v[0];
}

static inline float horizontal_sum(vfloat v) {  // a shuffle tree, not 15 scalar adds
    v += __builtin_shuffle(v, (vint){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (vint){4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
    v += __builtin_shuffle(v, (vint){2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
    v += __builtin_shuffle(v, (vint){1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});
    return v[0];
}

// e^x, 16 lanes: Cephes' expf (range reduction by ln 2, a degree-6 polynomial, 2^n built in the exponent
// bits), within 2 ulp of libm, which would be called once per element. Arguments are clamped to
// [-87, 88]: e^-87 (1.6e-38) is a zero beside any term a softmax or a sigmoid adds it to, and e^88
// (1.7e38) an infinity.
static inline vfloat exp16(vfloat x) {
    x = x < -87.f ? -87.f : x;
    x = x > 88.f ? 88.f : x;
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
