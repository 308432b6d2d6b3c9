/* ADD, int8, optimized set (dq_kernels.h): the same integers as dq_add_s8.c. With AVX2
 * and double rounding: 8 elements at a time through dq_simd_avx2.h's multiply and
 * clamp (the scaled inputs are below 2^28 in magnitude, so their int32 sum is exact,
 * as in the reference). The tail, single rounding and builds without AVX2 use the
 * reference kernel. */
#include "dq_kernels.h"

#if defined(__AVX2__)
#include "dq_simd_avx2.h"

static __m256i scaled(const int8_t *x, int32_t offset, int32_t left_shift, int32_t m,
                      int32_t shift) {
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)x));
    v = _mm256_sllv_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(offset)),
                          _mm256_set1_epi32(left_shift));
    return dq_mul_by_quantized_multiplier_avx2(v, _mm256_set1_epi32(m), _mm256_set1_epi32(shift));
}

dq_status dq_add_s8_opt(const dq_add_s8_params *p, int32_t n, const int8_t *in1,
                        const int8_t *in2, int8_t *out) {
    if (p->rounding != DQ_ROUND_DOUBLE) return dq_add_s8(p, n, in1, in2, out);
    const __m256i m = _mm256_set1_epi32(p->out_multiplier), s = _mm256_set1_epi32(p->out_shift);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i sum = _mm256_add_epi32(
            scaled(in1 + i, p->in1_offset, p->left_shift, p->in1_multiplier, p->in1_shift),
            scaled(in2 + i, p->in2_offset, p->left_shift, p->in2_multiplier, p->in2_shift));
        const __m256i v = dq_offset_clamp_avx2(dq_mul_by_quantized_multiplier_avx2(sum, m, s),
                                               p->out_offset, p->act_min, p->act_max);
        dq_store8_avx2(out + i, v);
    }
    return dq_add_s8(p, n - i, in1 + i, in2 + i, out + i);
}

#else   /* portable C: the reference loop */

dq_status dq_add_s8_opt(const dq_add_s8_params *p, int32_t n, const int8_t *in1,
                        const int8_t *in2, int8_t *out) {
    return dq_add_s8(p, n, in1, in2, out);
}

#endif
