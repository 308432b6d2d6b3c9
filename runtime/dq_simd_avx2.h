/* dq_simd_avx2.h: dq_common.h's int8 requantization for 8 lanes at once, AVX2, for
 * the optimized kernels (dq_*_opt.c). Lane for lane the same integers as
 * dq_requantize_s8(acc, m, shift, out_offset, act_min, act_max, DQ_ROUND_DOUBLE):
 *
 *   a = acc * 2^max(shift, 0)          wrapping in int32, as the scalar int32 cast does
 *   SRDHM(a, m) = floor((a * m + 2^30) / 2^31)
 *       (the scalar form adds 2^30 or 1 - 2^30 by sign and divides toward zero; for
 *        a * m < 0 that is (a * m + 1 - 2^30 + 2^31 - 1) >> 31, the same expression;
 *        the saturated case a = m = INT32_MIN cannot occur: m >= 0)
 *   RDivPOT(x, e) = (x >> e) + ((x & mask) > (mask >> 1) + (x < 0)),  mask = 2^e - 1
 *   clamp(x + out_offset, lo, hi) = clamp(x, lo - out_offset, hi - out_offset) + out_offset
 *       (no int32 overflow: the bounds are within [-255, 255])
 *
 * Only for DQ_ROUND_DOUBLE; the single-rounding variant stays scalar. */
#ifndef DQ_SIMD_AVX2_H
#define DQ_SIMD_AVX2_H

#if defined(__AVX2__)
#include <immintrin.h>

#include "dq_ops.h"

/* floor((a * m + 2^30) / 2^31) per 32-bit lane; m >= 0. */
static inline __m256i dq_srdhm_avx2(__m256i a, __m256i m) {
    const __m256i nudge = _mm256_set1_epi64x((int64_t)1 << 30);
    const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(a, m), nudge);
    const __m256i odd = _mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(m, 32)), nudge);
    /* bits 31..62 of each 64-bit sum: a logical shift gives the same low 32 bits */
    return _mm256_blend_epi32(_mm256_srli_epi64(even, 31), _mm256_slli_epi64(odd, 1), 0xAA);
}

/* x / 2^e rounded half away from zero, per lane; e in [0, 31]. */
static inline __m256i dq_rounding_divide_by_pot_avx2(__m256i x, __m256i e) {
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, e), one);
    const __m256i remainder = _mm256_and_si256(x, mask);
    const __m256i negative = _mm256_srli_epi32(x, 31);                  /* 1 if x < 0 */
    const __m256i threshold = _mm256_add_epi32(_mm256_srai_epi32(mask, 1), negative);
    const __m256i up = _mm256_srli_epi32(_mm256_cmpgt_epi32(remainder, threshold), 31);
    return _mm256_add_epi32(_mm256_srav_epi32(x, e), up);
}

/* dq_mul_by_quantized_multiplier(x, m, shift, DQ_ROUND_DOUBLE) per lane. */
static inline __m256i dq_mul_by_quantized_multiplier_avx2(__m256i x, __m256i m, __m256i shift) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i left = _mm256_max_epi32(shift, zero);
    const __m256i right = _mm256_max_epi32(_mm256_sub_epi32(zero, shift), zero);
    return dq_rounding_divide_by_pot_avx2(dq_srdhm_avx2(_mm256_sllv_epi32(x, left), m), right);
}

/* clamp(v + offset, lo, hi) per lane, without forming v + offset in int32. */
static inline __m256i dq_offset_clamp_avx2(__m256i v, int32_t offset, int32_t lo, int32_t hi) {
    v = _mm256_max_epi32(v, _mm256_set1_epi32(lo - offset));
    v = _mm256_min_epi32(v, _mm256_set1_epi32(hi - offset));
    return _mm256_add_epi32(v, _mm256_set1_epi32(offset));
}

/* Stores 8 int32 lanes, each already in [-128, 127], as 8 bytes. */
static inline void dq_store8_avx2(int8_t *out, __m256i v) {
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(v, v), v);   /* lanes 0, 4 */
    const __m256i two = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
    _mm_storel_epi64((__m128i *)out, _mm256_castsi256_si128(two));
}

/* 8 int32 accumulators of channels oc0 .. oc0 + 7 to int8 (as int32 lanes). */
static inline __m256i dq_requantize_s8_avx2(__m256i acc, const dq_requant_s8 *q, int32_t oc0) {
    const __m256i shift = _mm256_loadu_si256((const __m256i *)(q->shift + oc0));
    const __m256i m = _mm256_loadu_si256((const __m256i *)(q->multiplier + oc0));
    return dq_offset_clamp_avx2(dq_mul_by_quantized_multiplier_avx2(acc, m, shift),
                                q->output_offset, q->act_min, q->act_max);
}

#endif
#endif
