/* MUL, int8, optimized set (dq_kernels.h): the same integers as dq_mul_s8.c. When
 * neither input broadcasts along channels (same shapes, or a 1 x 1 x C or H x 1 x C
 * gate as in squeeze-excitation), each output row (h, w) reads a contiguous row of C
 * channels from each input, found once per row instead of once per element. Within a
 * row, with AVX2 and double rounding, 8 channels at a time through dq_simd_avx2.h's
 * multiply and clamp: the product (in1 + off1) * (in2 + off2) is at most 255 * 255 in
 * magnitude (dq_validate.c), exact in int32 as in the reference. The tail of a row,
 * single rounding and builds without AVX2 (the Cortex-M build) take the reference
 * arithmetic per element (dq_requantize_s8). A channel broadcast (an input with C = 1
 * and an output with C > 1) uses the reference kernel. */
#include "dq_kernels.h"

#if defined(__AVX2__)
#include "dq_simd_avx2.h"

/* out[c] for c in [0, n - n % 8): the reference arithmetic, 8 lanes at a time; returns
 * the number of channels done. */
static int32_t row_avx2(const dq_mul_s8_params *p, int32_t n, const int8_t *a,
                        const int8_t *b, int8_t *out) {
    if (p->rounding != DQ_ROUND_DOUBLE) return 0;
    const __m256i off1 = _mm256_set1_epi32(p->in1_offset), off2 = _mm256_set1_epi32(p->in2_offset);
    const __m256i m = _mm256_set1_epi32(p->multiplier), s = _mm256_set1_epi32(p->shift);
    int32_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const __m256i x = _mm256_add_epi32(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(a + c))), off1);
        const __m256i y = _mm256_add_epi32(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + c))), off2);
        const __m256i v = dq_mul_by_quantized_multiplier_avx2(_mm256_mullo_epi32(x, y), m, s);
        dq_store8_avx2(out + c, dq_offset_clamp_avx2(v, p->out_offset, p->act_min, p->act_max));
    }
    return c;
}
#else
static int32_t row_avx2(const dq_mul_s8_params *p, int32_t n, const int8_t *a,
                        const int8_t *b, int8_t *out) {
    (void)p, (void)n, (void)a, (void)b, (void)out;
    return 0;
}
#endif

static void row(const dq_mul_s8_params *p, int32_t n, const int8_t *a, const int8_t *b,
                int8_t *out) {
    for (int32_t c = row_avx2(p, n, a, b, out); c < n; ++c)
        out[c] = dq_requantize_s8((a[c] + p->in1_offset) * (b[c] + p->in2_offset),
                                  p->multiplier, p->shift, p->out_offset, p->act_min,
                                  p->act_max, p->rounding);
}

dq_status dq_mul_s8_opt(const dq_mul_s8_params *p, const dq_dims *d1, const int8_t *in1,
                        const dq_dims *d2, const int8_t *in2, const dq_dims *out_dims,
                        int8_t *out) {
    const int32_t n = out_dims->c;
    if (d1->c != n || d2->c != n) return dq_mul_s8(p, d1, in1, d2, in2, out_dims, out);
    for (int32_t h = 0; h < out_dims->h; ++h)
        for (int32_t w = 0; w < out_dims->w; ++w, out += n)
            row(p, n, in1 + dq_broadcast_index(d1, h, w, 0), in2 + dq_broadcast_index(d2, h, w, 0),
                out);
    return DQ_OK;
}
