/* MAX_POOL, int8, optimized set (dq_kernels.h): the same integers as dq_pool_s8.c.
 * With AVX2: 32 channels at a time (then 16, then 8), the maximum over the in-bounds window (from -128,
 * as the reference starts), clamped to the activation range. */
#include "dq_arm_dsp.h"
#include "dq_kernels.h"

#if !DQ_DSP   /* else dq_max_pool_s8_dsp.c */

#if defined(__AVX2__)
#include <immintrin.h>

/* The maximum over the window of 32 channels from c (8 or 16 when `width` says so;
 * only that many bytes are read). */
static __m256i window_max(const dq_window *w, const dq_dims *d, const int8_t *in,
                          int32_t oy, int32_t ox, int32_t c, int32_t width) {
    __m256i m = _mm256_set1_epi8(-128);
    for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
        const int32_t iy = oy * w->stride_h - w->pad_top + ky;
        if (iy < 0 || iy >= d->h) continue;
        for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
            const int32_t ix = ox * w->stride_w - w->pad_left + kx;
            if (ix < 0 || ix >= d->w) continue;
            const int8_t *x = in + ((int64_t)iy * d->w + ix) * d->c + c;
            const __m256i v = width == 32 ? _mm256_loadu_si256((const __m256i *)x)
                            : width == 16 ? _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)x))
                                          : _mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)x));
            m = _mm256_max_epi8(m, v);
        }
    }
    return m;
}

static void store_bytes(int8_t *o, __m256i v, int32_t width) {
    if (width == 32) _mm256_storeu_si256((__m256i *)o, v);
    else if (width == 16) _mm_storeu_si128((__m128i *)o, _mm256_castsi256_si128(v));
    else _mm_storel_epi64((__m128i *)o, _mm256_castsi256_si128(v));
}

static int32_t window_max1(const dq_window *w, const dq_dims *d, const int8_t *in,
                           int32_t oy, int32_t ox, int32_t c) {
    int32_t m = -128;
    for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
        const int32_t iy = oy * w->stride_h - w->pad_top + ky;
        if (iy < 0 || iy >= d->h) continue;
        for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
            const int32_t ix = ox * w->stride_w - w->pad_left + kx;
            if (ix < 0 || ix >= d->w) continue;
            const int32_t x = in[((int64_t)iy * d->w + ix) * d->c + c];
            m = x > m ? x : m;
        }
    }
    return m;
}

dq_status dq_max_pool_s8_opt(const dq_window *w, int32_t act_min, int32_t act_max,
                             const dq_dims *in_dims, const int8_t *in,
                             const dq_dims *out_dims, int8_t *out) {
    const __m256i lo = _mm256_set1_epi8((int8_t)act_min), hi = _mm256_set1_epi8((int8_t)act_max);
    const int32_t channels = out_dims->c;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox) {
            int8_t *o = out + ((int64_t)oy * out_dims->w + ox) * channels;
            int32_t c = 0;
            for (int32_t width = 32; width >= 8; width /= 2)
                for (; c + width <= channels; c += width) {
                    const __m256i m = window_max(w, in_dims, in, oy, ox, c, width);
                    store_bytes(o + c, _mm256_min_epi8(_mm256_max_epi8(m, lo), hi), width);
                }
            for (; c < channels; ++c)
                o[c] = (int8_t)dq_clamp(window_max1(w, in_dims, in, oy, ox, c), act_min, act_max);
        }
    return DQ_OK;
}

#else   /* portable C: the reference loop */

dq_status dq_max_pool_s8_opt(const dq_window *w, int32_t act_min, int32_t act_max,
                             const dq_dims *in_dims, const int8_t *in,
                             const dq_dims *out_dims, int8_t *out) {
    return dq_max_pool_s8(w, act_min, act_max, in_dims, in, out_dims, out);
}

#endif

#endif   /* !DQ_DSP */
