/* DEPTHWISE_CONV2D, int8, optimized set (dq_kernels.h): the same integers as
 * dq_depthwise_conv2d_s8.c. With AVX2 and depth multiplier 1: for each output pixel,
 * 16 channels at a time, each in-bounds tap adds (x + input_offset) * w for 16
 * channels; |x + offset| <= 255 and |w| <= 128, so the int16 product is exact before it
 * is widened to int32. Remaining channels, depth multipliers above 1 and builds
 * without AVX2 use the reference loop. No scratch. */
#include "dq_arm_dsp.h"
#include "dq_kernels.h"

#if !DQ_DSP   /* else dq_*_dsp.c */

#if defined(__AVX2__)
#include "dq_simd_avx2.h"

/* acc (channels c .. c + 15) += sum over in-bounds taps of (x + offset) * w. */
static void taps16(const dq_window *w, const dq_requant_s8 *q, const dq_dims *in_dims,
                   const int8_t *in, const int8_t *filter, int32_t c, int32_t oy, int32_t ox,
                   __m256i *lo, __m256i *hi) {
    const __m256i offset = _mm256_set1_epi16((int16_t)q->input_offset);
    for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
        const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
        if (iy < 0 || iy >= in_dims->h) continue;
        for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
            const int32_t ix = ox * w->stride_w - w->pad_left + kx * w->dil_w;
            if (ix < 0 || ix >= in_dims->w) continue;
            const int8_t *x = in + ((int64_t)iy * in_dims->w + ix) * in_dims->c + c;
            const int8_t *f = filter + (ky * w->kernel_w + kx) * in_dims->c + c;
            const __m256i xv = _mm256_add_epi16(
                _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x)), offset);
            const __m256i p = _mm256_mullo_epi16(
                xv, _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)f)));
            *lo = _mm256_add_epi32(*lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
            *hi = _mm256_add_epi32(*hi, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
        }
    }
}

static void store8(const dq_requant_s8 *q, const int32_t *bias, __m256i acc, int32_t c,
                   int8_t *out) {
    int32_t v[8];
    acc = _mm256_add_epi32(acc, _mm256_loadu_si256((const __m256i *)(bias + c)));
    if (q->rounding == DQ_ROUND_DOUBLE) {
        dq_store8_avx2(out + c, dq_requantize_s8_avx2(acc, q, c));
        return;
    }
    _mm256_storeu_si256((__m256i *)v, acc);
    for (int32_t j = 0; j < 8; ++j)
        out[c + j] = dq_requantize_s8(v[j], q->multiplier[c + j], q->shift[c + j],
                                      q->output_offset, q->act_min, q->act_max, q->rounding);
}

/* The reference computation of one output (pixel, channel), multiplier 1. */
static int8_t one_channel(const dq_window *w, const dq_requant_s8 *q, const dq_dims *in_dims,
                          const int8_t *in, const int8_t *filter, const int32_t *bias,
                          int32_t c, int32_t oy, int32_t ox) {
    int32_t acc = 0;
    for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
        const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
        if (iy < 0 || iy >= in_dims->h) continue;
        for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
            const int32_t ix = ox * w->stride_w - w->pad_left + kx * w->dil_w;
            if (ix < 0 || ix >= in_dims->w) continue;
            const int32_t x = in[((int64_t)iy * in_dims->w + ix) * in_dims->c + c];
            acc += (x + q->input_offset) * filter[(ky * w->kernel_w + kx) * in_dims->c + c];
        }
    }
    return dq_requantize_s8(acc + bias[c], q->multiplier[c], q->shift[c], q->output_offset,
                            q->act_min, q->act_max, q->rounding);
}

dq_status dq_depthwise_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w,
                                     const dq_requant_s8 *q, const dq_dims *in_dims,
                                     const int8_t *in, const int8_t *filter,
                                     const int32_t *bias, const dq_dims *out_dims,
                                     int8_t *out) {
    if (w->groups_or_multiplier != 1)
        return dq_depthwise_conv2d_s8(ctx, w, q, in_dims, in, filter, bias, out_dims, out);
    const int32_t channels = out_dims->c, vector_end = channels - channels % 16;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox) {
            int8_t *o = out + ((int64_t)oy * out_dims->w + ox) * channels;
            for (int32_t c = 0; c < vector_end; c += 16) {
                __m256i lo = _mm256_setzero_si256(), hi = lo;
                taps16(w, q, in_dims, in, filter, c, oy, ox, &lo, &hi);
                store8(q, bias, lo, c, o);
                store8(q, bias, hi, c + 8, o);
            }
            for (int32_t c = vector_end; c < channels; ++c)
                o[c] = one_channel(w, q, in_dims, in, filter, bias, c, oy, ox);
        }
    return DQ_OK;
}

#else   /* portable C: the reference loop */

dq_status dq_depthwise_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w,
                                     const dq_requant_s8 *q, const dq_dims *in_dims,
                                     const int8_t *in, const int8_t *filter,
                                     const int32_t *bias, const dq_dims *out_dims,
                                     int8_t *out) {
    return dq_depthwise_conv2d_s8(ctx, w, q, in_dims, in, filter, bias, out_dims, out);
}

#endif

#endif   /* !DQ_DSP */
