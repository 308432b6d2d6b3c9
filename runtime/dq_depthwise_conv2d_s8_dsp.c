/* DEPTHWISE_CONV2D, int8, optimized set on a core with the DSP extension
 * (dq_arm_dsp.h): the same integers as dq_depthwise_conv2d_s8.c. With depth
 * multiplier 1, for each output pixel, 4 channels at a time: each in-bounds tap loads
 * 4 input and 4 filter bytes (both contiguous over channels in NHWC and in the
 * [kh][kw][c] filter), unpacks them with SXTAB16 (adding the input offset to both
 * halves) and SXTB16, and adds the 4 products with SMLABB / SMLATT (CMSIS-NN's
 * arm_depthwise_conv_s8_opt also works 4 channels wide; this is not its code). The
 * in-bounds tap range is computed once per pixel, not tested per tap. Remaining
 * channels use the reference sum; depth multipliers above 1 the reference kernel.
 * No scratch. */
#include "dq_arm_dsp.h"
#include "dq_kernels.h"

#if DQ_DSP

/* [*lo, *hi): the kernel taps t with 0 <= base + t * dil < size */
static void tap_range(int32_t base, int32_t dil, int32_t taps, int32_t size, int32_t *lo,
                      int32_t *hi) {
    int32_t a = 0, b = taps;
    while (a < b && base + a * dil < 0) ++a;
    while (b > a && base + (b - 1) * dil >= size) --b;
    *lo = a;
    *hi = b;
}

static int8_t requantize(const dq_requant_s8 *q, int32_t acc, int32_t oc) {
    return dq_requantize_s8_dsp(acc, q->multiplier[oc], q->shift[oc], q);
}

typedef struct { int32_t y0, y1, x0, x1, iy, ix; } taps;   /* ranges and window origin */

/* Channels c .. c + 3 of one output pixel. */
static void quad(const dq_window *w, const dq_requant_s8 *q, const dq_dims *in_dims,
                 const int8_t *in, const int8_t *filter, const int32_t *bias, const taps *t,
                 int32_t c, int8_t *out) {
    const int32_t off2 = dq_dup16(q->input_offset), channels = in_dims->c;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int32_t ky = t->y0; ky < t->y1; ++ky) {
        /* as an index: the window's origin may lie left of the row */
        const int32_t row = ((t->iy + ky * w->dil_h) * in_dims->w + t->ix) * channels + c;
        const int8_t *f = filter + ky * w->kernel_w * channels + c;
        for (int32_t kx = t->x0; kx < t->x1; ++kx) {
            const uint32_t xv = dq_load4(in + row + kx * w->dil_w * channels);
            const uint32_t fv = dq_load4(f + kx * channels);
            const int32_t xe = dq_sxtab16(off2, xv), xo = dq_sxtab16(off2, (xv >> 8) | (xv << 24));
            const int32_t fe = dq_sxtb16(fv), fo = dq_sxtb16_ror8(fv);
            s0 = dq_smlabb(xe, fe, s0);
            s2 = dq_smlatt(xe, fe, s2);
            s1 = dq_smlabb(xo, fo, s1);
            s3 = dq_smlatt(xo, fo, s3);
        }
    }
    out[c] = requantize(q, s0 + bias[c], c);
    out[c + 1] = requantize(q, s1 + bias[c + 1], c + 1);
    out[c + 2] = requantize(q, s2 + bias[c + 2], c + 2);
    out[c + 3] = requantize(q, s3 + bias[c + 3], c + 3);
}

/* One channel of one output pixel, as the reference sums it. */
static void single(const dq_window *w, const dq_requant_s8 *q, const dq_dims *in_dims,
                   const int8_t *in, const int8_t *filter, const int32_t *bias, const taps *t,
                   int32_t c, int8_t *out) {
    int32_t acc = 0;
    for (int32_t ky = t->y0; ky < t->y1; ++ky)
        for (int32_t kx = t->x0; kx < t->x1; ++kx) {
            const int32_t iy = t->iy + ky * w->dil_h, ix = t->ix + kx * w->dil_w;
            acc += (in[(iy * in_dims->w + ix) * in_dims->c + c] + q->input_offset) *
                   filter[(ky * w->kernel_w + kx) * in_dims->c + c];
        }
    out[c] = requantize(q, acc + bias[c], c);
}

dq_status dq_depthwise_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w,
                                     const dq_requant_s8 *q, const dq_dims *in_dims,
                                     const int8_t *in, const int8_t *filter,
                                     const int32_t *bias, const dq_dims *out_dims,
                                     int8_t *out) {
    if (w->groups_or_multiplier != 1)
        return dq_depthwise_conv2d_s8(ctx, w, q, in_dims, in, filter, bias, out_dims, out);
    const int32_t c4 = out_dims->c & ~3;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox) {
            taps t;
            t.iy = oy * w->stride_h - w->pad_top;
            t.ix = ox * w->stride_w - w->pad_left;
            tap_range(t.iy, w->dil_h, w->kernel_h, in_dims->h, &t.y0, &t.y1);
            tap_range(t.ix, w->dil_w, w->kernel_w, in_dims->w, &t.x0, &t.x1);
            int8_t *o = out + (oy * out_dims->w + ox) * out_dims->c;
            int32_t c = 0;
            for (; c < c4; c += 4) quad(w, q, in_dims, in, filter, bias, &t, c, o);
            for (; c < out_dims->c; ++c) single(w, q, in_dims, in, filter, bias, &t, c, o);
        }
    return DQ_OK;
}

#else
typedef int dq_depthwise_conv2d_s8_dsp_unused;   /* ISO C: a translation unit is not empty */
#endif
