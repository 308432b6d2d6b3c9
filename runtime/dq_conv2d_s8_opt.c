/* CONV2D, int8, optimized set (dq_kernels.h): the same integers as dq_conv2d_s8.c.
 *
 * With AVX2 (compiled with -mavx2 or -march=native on a machine that has it): per
 * group, the filter is packed into int16 pairs, 8 output channels wide, on the first
 * sample of each dq_invoke call (kept in the op's scratch for the others, dq_ctx)
 *   packed[block][k / 2][j][k % 2] = filter[oc = block * 8 + j][k]   (0 beyond O or K)
 * where k runs over the K = kernel_h * kernel_w * group_in taps of one output. For a
 * tile of up to 4 output pixels, im2col writes each pixel's K values (x + input_offset,
 * 0 at padded positions, exactly what the reference skips) as int16 pairs; one
 * vpmaddwd of a broadcast pair with a packed row then adds 2 taps to 8 channels, so
 * no horizontal sums are needed. |x + offset| <= 255 and |w| <= 128: each pair sum fits
 * int32 exactly; the int32 totals cannot overflow (dq_validate.c bounds taps and
 * biases), so the order of the additions does not matter.
 *
 * Without AVX2: the loops visit each in-bounds kernel tap once per output pixel and
 * accumulate all output channels of one group together in int32 scratch.
 *
 * Scratch (either path): planned in the arena by dq_model_init, sized by the query. */
#include <string.h>

#include "dq_arm_dsp.h"
#include "dq_kernels.h"

#if !DQ_DSP   /* else dq_*_dsp.c */

#if defined(__AVX2__)
#include "dq_simd_avx2.h"

#define TILE 4      /* output pixels per im2col tile */
#define BLOCK 8     /* output channels per packed block (one __m256i of int32) */

typedef struct {
    int32_t group_in, group_out, k_pairs, blocks;
    size_t group_packed;      /* int16 values of one group's packed filter */
} conv_shape;

static conv_shape shape_of(const dq_window *w, const dq_dims *in_dims, const dq_dims *out_dims) {
    const int32_t groups = w->groups_or_multiplier;
    conv_shape s;
    s.group_in = in_dims->c / groups;
    s.group_out = out_dims->c / groups;
    s.k_pairs = (w->kernel_h * w->kernel_w * s.group_in + 1) / 2;
    s.blocks = (s.group_out + BLOCK - 1) / BLOCK;
    s.group_packed = (size_t)s.blocks * s.k_pairs * BLOCK * 2;
    return s;
}

size_t dq_conv2d_s8_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                const dq_dims *out_dims) {
    const conv_shape s = shape_of(w, in_dims, out_dims);
    const size_t packed = (size_t)w->groups_or_multiplier * s.group_packed * sizeof(int16_t);
    const size_t cols = (size_t)TILE * s.k_pairs * 2 * sizeof(int16_t);
    return packed + cols;
}

/* The filter of group g as packed int16 pairs (see the top of the file). */
static void pack_filter(const conv_shape *s, int32_t taps, const int8_t *filter, int32_t g,
                        int16_t *packed) {
    const int32_t k_total = taps * s->group_in;
    memset(packed, 0, s->group_packed * sizeof(int16_t));
    for (int32_t j = 0; j < s->group_out; ++j) {
        const int8_t *f = filter + (int64_t)(g * s->group_out + j) * k_total;
        int16_t *dst = packed + (int64_t)(j / BLOCK) * s->k_pairs * BLOCK * 2 + (j % BLOCK) * 2;
        for (int32_t k = 0; k < k_total; ++k) dst[(k / 2) * BLOCK * 2 + (k % 2)] = f[k];
    }
}

/* dst[i] = src[i] + offset as int16, i < n. */
static void widen(const int8_t *src, int32_t n, int32_t offset, int16_t *dst) {
    const __m256i off = _mm256_set1_epi16((int16_t)offset);
    int32_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_add_epi16(
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(src + i))), off));
    for (; i < n; ++i) dst[i] = (int16_t)(src[i] + offset);
}

/* One output pixel's K values (group g) as int16, 0 where the window is outside, then
 * zeros up to 2 * k_pairs. A window row that lies inside the image and is contiguous
 * in memory (one group, no horizontal dilation) is widened in one go. */
static void im2col(const dq_window *w, const dq_dims *in_dims, const int8_t *in,
                   int32_t offset, int32_t group_in, int32_t g, int32_t oy, int32_t ox,
                   int32_t k_pairs, int16_t *half) {
    const int32_t ix0 = ox * w->stride_w - w->pad_left;
    const int32_t ix_last = ix0 + (w->kernel_w - 1) * w->dil_w;
    const int row_contiguous = group_in == in_dims->c && w->dil_w == 1 && ix0 >= 0 &&
                               ix_last < in_dims->w;
    int32_t at = 0;
    for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
        const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
        const int row_inside = iy >= 0 && iy < in_dims->h;
        if (row_inside && row_contiguous) {
            widen(in + ((int64_t)iy * in_dims->w + ix0) * in_dims->c, w->kernel_w * group_in,
                  offset, half + at);
            at += w->kernel_w * group_in;
            continue;
        }
        for (int32_t kx = 0; kx < w->kernel_w; ++kx, at += group_in) {
            const int32_t ix = ix0 + kx * w->dil_w;
            if (!row_inside || ix < 0 || ix >= in_dims->w) {
                memset(half + at, 0, (size_t)group_in * sizeof(int16_t));
                continue;
            }
            widen(in + ((int64_t)iy * in_dims->w + ix) * in_dims->c + g * group_in, group_in,
                  offset, half + at);
        }
    }
    while (at < 2 * k_pairs) half[at++] = 0;
}

/* Taps 2kp and 2kp + 1 of a column, broadcast to every 32-bit lane. */
static __m256i broadcast_pair(const int16_t *col, int32_t kp) {
    return _mm256_broadcastd_epi32(_mm_loadu_si32(col + 2 * kp));
}

/* acc[p] (8 channels of a block) for the tile's n pixels: sum over k of col * packed. */
static void dot_tile(const int16_t *cols, int32_t n, int32_t k_pairs, const int16_t *packed,
                     __m256i *acc) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    const int16_t *c0 = cols, *c1 = c0 + 2 * k_pairs, *c2 = c1 + 2 * k_pairs,
                  *c3 = c2 + 2 * k_pairs;
    for (int32_t kp = 0; kp < k_pairs; ++kp) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(packed + kp * BLOCK * 2));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(broadcast_pair(c0, kp), wv));
        if (n > 1) a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(broadcast_pair(c1, kp), wv));
        if (n > 2) a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(broadcast_pair(c2, kp), wv));
        if (n > 3) a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(broadcast_pair(c3, kp), wv));
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* Channels oc0 .. oc0 + n - 1 of one pixel: bias added, requantized, stored. */
static void requantize_block(const dq_requant_s8 *q, const int32_t *bias, __m256i acc,
                             int32_t oc0, int32_t n, int8_t *out) {
    int32_t v[BLOCK];
    if (n == BLOCK && q->rounding == DQ_ROUND_DOUBLE) {
        acc = _mm256_add_epi32(acc, _mm256_loadu_si256((const __m256i *)(bias + oc0)));
        dq_store8_avx2(out, dq_requantize_s8_avx2(acc, q, oc0));
        return;
    }
    _mm256_storeu_si256((__m256i *)v, acc);
    for (int32_t j = 0; j < n; ++j)
        out[j] = dq_requantize_s8(v[j] + bias[oc0 + j], q->multiplier[oc0 + j],
                                  q->shift[oc0 + j], q->output_offset, q->act_min,
                                  q->act_max, q->rounding);
}

/* sum of col[k] * f[k] over k < n: int16 columns, int8 filter row. */
static int32_t dot_row(const int16_t *col, const int8_t *f, int32_t n) {
    __m256i acc = _mm256_setzero_si256();
    int32_t k = 0;
    for (; k + 16 <= n; k += 16) {
        const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(f + k)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(
            _mm256_loadu_si256((const __m256i *)(col + k)), w));
    }
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4E));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xB1));
    int32_t total = _mm_cvtsi128_si32(sum);
    for (; k < n; ++k) total += col[k] * f[k];
    return total;
}

/* Few output pixels (a fully connected layer written as a 1x1 convolution): packing
 * the filter would cost as much as the products, so each pixel's column meets the int8
 * filter rows directly. */
static void conv_direct(const conv_shape *s, const dq_window *w, const dq_requant_s8 *q,
                        const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                        const int32_t *bias, const dq_dims *out_dims, int8_t *out,
                        int16_t *col) {
    const int32_t groups = w->groups_or_multiplier, k_total = w->kernel_h * w->kernel_w * s->group_in;
    for (int32_t p = 0; p < out_dims->h * out_dims->w; ++p)
        for (int32_t g = 0; g < groups; ++g) {
            im2col(w, in_dims, in, q->input_offset, s->group_in, g, p / out_dims->w,
                   p % out_dims->w, s->k_pairs, col);
            for (int32_t j = 0; j < s->group_out; ++j) {
                const int32_t oc = g * s->group_out + j;
                const int32_t acc = dot_row(col, filter + (int64_t)oc * k_total, k_total);
                out[(int64_t)p * out_dims->c + oc] = dq_requantize_s8(
                    acc + bias[oc], q->multiplier[oc], q->shift[oc], q->output_offset,
                    q->act_min, q->act_max, q->rounding);
            }
        }
}

dq_status dq_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w, const dq_requant_s8 *q,
                           const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    const conv_shape s = shape_of(w, in_dims, out_dims);
    const int32_t groups = w->groups_or_multiplier, pixels = out_dims->h * out_dims->w;
    int16_t *packed = (int16_t *)ctx->buffer;
    int16_t *cols = packed + groups * s.group_packed;
    __m256i acc[TILE];
    if (pixels < TILE) {
        conv_direct(&s, w, q, in_dims, in, filter, bias, out_dims, out, cols);
        return DQ_OK;
    }
    if (ctx->first_sample)                   /* packed once per dq_invoke call */
        for (int32_t g = 0; g < groups; ++g)
            pack_filter(&s, w->kernel_h * w->kernel_w, filter, g, packed + g * s.group_packed);
    for (int32_t g = 0; g < groups; ++g) {
        for (int32_t p0 = 0; p0 < pixels; p0 += TILE) {
            const int32_t n = pixels - p0 < TILE ? pixels - p0 : TILE;
            for (int32_t t = 0; t < n; ++t)
                im2col(w, in_dims, in, q->input_offset, s.group_in, g, (p0 + t) / out_dims->w,
                       (p0 + t) % out_dims->w, s.k_pairs, cols + t * 2 * s.k_pairs);
            for (int32_t b = 0; b < s.blocks; ++b) {
                const int32_t oc0 = g * s.group_out + b * BLOCK;
                const int32_t nc = s.group_out - b * BLOCK < BLOCK ? s.group_out - b * BLOCK : BLOCK;
                dot_tile(cols, n, s.k_pairs,
                         packed + g * s.group_packed + (size_t)b * s.k_pairs * BLOCK * 2, acc);
                for (int32_t t = 0; t < n; ++t)
                    requantize_block(q, bias, acc[t], oc0, nc,
                                     out + (int64_t)(p0 + t) * out_dims->c + oc0);
            }
        }
    }
    return DQ_OK;
}

#else   /* portable C */

size_t dq_conv2d_s8_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                const dq_dims *out_dims) {
    (void)w;
    (void)in_dims;
    return (size_t)out_dims->c * sizeof(int32_t);
}

/* acc[j] += sum over the group's input channels of (x + offset) * w, for output
 * channels oc0 .. oc0 + n - 1 (all in one group, whose inputs start at x). */
static void accumulate_tap(int32_t input_offset, const int8_t *x, const int8_t *filter,
                           int32_t tap, int32_t taps, int32_t group_in, int32_t oc0,
                           int32_t n, int32_t *acc) {
    for (int32_t j = 0; j < n; ++j) {
        const int8_t *f = filter + ((oc0 + j) * taps + tap) * group_in;
        int32_t sum = 0;
        for (int32_t ic = 0; ic < group_in; ++ic) sum += (x[ic] + input_offset) * f[ic];
        acc[j] += sum;
    }
}

dq_status dq_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w, const dq_requant_s8 *q,
                           const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    const int32_t groups = w->groups_or_multiplier;
    const int32_t group_in = in_dims->c / groups, group_out = out_dims->c / groups;
    const int32_t taps = w->kernel_h * w->kernel_w;
    int32_t *acc = (int32_t *)ctx->buffer;
    for (int32_t oy = 0; oy < out_dims->h; ++oy) {
        for (int32_t ox = 0; ox < out_dims->w; ++ox) {
            int8_t *o = out + (oy * out_dims->w + ox) * out_dims->c;
            for (int32_t oc0 = 0; oc0 < out_dims->c; oc0 += group_out) {
                const int32_t group = oc0 / group_out;
                for (int32_t j = 0; j < group_out; ++j) acc[j] = bias[oc0 + j];
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
                    if (iy < 0 || iy >= in_dims->h) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = ox * w->stride_w - w->pad_left + kx * w->dil_w;
                        if (ix < 0 || ix >= in_dims->w) continue;
                        accumulate_tap(q->input_offset,
                                       in + (iy * in_dims->w + ix) * in_dims->c + group * group_in,
                                       filter, ky * w->kernel_w + kx, taps, group_in, oc0,
                                       group_out, acc);
                    }
                }
                for (int32_t j = 0; j < group_out; ++j)
                    o[oc0 + j] = dq_requantize_s8(acc[j], q->multiplier[oc0 + j],
                                                  q->shift[oc0 + j], q->output_offset,
                                                  q->act_min, q->act_max, q->rounding);
            }
        }
    }
    return DQ_OK;
}

#endif

#endif   /* !DQ_DSP */
