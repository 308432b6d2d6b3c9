/* CONV2D, int8, optimized set on a core with the DSP extension (dq_arm_dsp.h): the
 * same integers as dq_conv2d_s8.c. The approach of CMSIS-NN's arm_convolve_s8 (read,
 * not copied): for two output pixels at a time, im2col writes each pixel's K =
 * kernel_h * kernel_w * group_in values (x + input_offset, 0 at padded positions,
 * exactly what the reference skips) as an int16 column in quad order; then for two
 * output channels at a time the int8 filter rows (in flash, never copied) meet both
 * columns with dual 16-bit MACs (SMLAD): 2 channels x 2 pixels x 4 values = 16 MACs
 * per 8 SMLAD, 4 SXTB16 and 6 loads. |x + offset| <= 255 and |w| <= 128: each product
 * pair fits int32 exactly; the int32 totals cannot overflow (dq_validate.c bounds the
 * taps and biases), so the order of the additions does not matter. A pixel or
 * channel without a partner is paired with itself and the duplicate sum dropped.
 *
 * Scratch: two columns, planned in the arena by dq_model_init. */
#include "dq_arm_dsp.h"
#include "dq_kernels.h"

#if DQ_DSP

typedef struct {
    int32_t group_in, group_out, k, k4, stride;   /* stride: int16 values per column */
} conv_shape;

static conv_shape shape_of(const dq_window *w, const dq_dims *in_dims, const dq_dims *out_dims) {
    conv_shape s;
    s.group_in = in_dims->c / w->groups_or_multiplier;
    s.group_out = out_dims->c / w->groups_or_multiplier;
    s.k = w->kernel_h * w->kernel_w * s.group_in;
    s.k4 = s.k & ~3;
    s.stride = (s.k + 1) & ~1;          /* keeps the second column 4-byte aligned */
    return s;
}

size_t dq_conv2d_s8_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                const dq_dims *out_dims) {
    return (size_t)2 * shape_of(w, in_dims, out_dims).stride * sizeof(int16_t);
}

/* The column of output pixel (oy, ox), group g. A window row that lies inside the
 * image and is contiguous in memory (one group, no horizontal dilation) is one run. */
static void im2col(const dq_window *w, const dq_dims *in_dims, const int8_t *in,
                   int32_t offset, const conv_shape *s, int32_t g, int32_t oy, int32_t ox,
                   int16_t *col) {
    const int32_t ix0 = ox * w->stride_w - w->pad_left;
    const int32_t ix_last = ix0 + (w->kernel_w - 1) * w->dil_w;
    const int row_contiguous = s->group_in == in_dims->c && w->dil_w == 1 && ix0 >= 0 &&
                               ix_last < in_dims->w;
    int32_t at = 0;
    for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
        const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
        const int row_inside = iy >= 0 && iy < in_dims->h;
        if (row_inside && row_contiguous) {
            const int32_t n = w->kernel_w * s->group_in;
            dq_column_put(col, s->k4, at, in + (iy * in_dims->w + ix0) * in_dims->c, n, offset);
            at += n;
            continue;
        }
        for (int32_t kx = 0; kx < w->kernel_w; ++kx, at += s->group_in) {
            const int32_t ix = ix0 + kx * w->dil_w;
            const int inside = row_inside && ix >= 0 && ix < in_dims->w;
            dq_column_put(col, s->k4, at,
                          inside ? in + (iy * in_dims->w + ix) * in_dims->c + g * s->group_in : NULL,
                          s->group_in, offset);
        }
    }
}

static int8_t requantize(const dq_requant_s8 *q, int32_t acc, int32_t oc) {
    return dq_requantize_s8_dsp(acc, q->multiplier[oc], q->shift[oc], q);
}

/* Output channels of group g for pixels p (column ca) and p + 1 (column cb, when two). */
static void channels(const conv_shape *s, const dq_requant_s8 *q, const int8_t *filter,
                     const int32_t *bias, int32_t g, const int16_t *ca, const int16_t *cb,
                     int two, int8_t *out_a, int8_t *out_b) {
    for (int32_t j = 0; j < s->group_out; j += 2) {
        const int32_t oc = g * s->group_out + j;
        const int pair = j + 1 < s->group_out;
        const int32_t oc1 = pair ? oc + 1 : oc;
        const int8_t *f0 = filter + oc * s->k, *f1 = filter + oc1 * s->k;
        int32_t acc[4] = {bias[oc], bias[oc], bias[oc1], bias[oc1]};
        if (two) {
            dq_dot_2x2(ca, cb, f0, f1, s->k, acc);
        } else {
            int32_t one[2] = {acc[0], acc[2]};
            dq_dot_1x2(ca, f0, f1, s->k, one);
            acc[0] = one[0];
            acc[2] = one[1];
        }
        out_a[oc] = requantize(q, acc[0], oc);
        if (two) out_b[oc] = requantize(q, acc[1], oc);
        if (pair) {
            out_a[oc1] = requantize(q, acc[2], oc1);
            if (two) out_b[oc1] = requantize(q, acc[3], oc1);
        }
    }
}

dq_status dq_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w, const dq_requant_s8 *q,
                           const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    const conv_shape s = shape_of(w, in_dims, out_dims);
    const int32_t pixels = out_dims->h * out_dims->w;
    int16_t *ca = (int16_t *)ctx->buffer, *cb = ca + s.stride;
    for (int32_t p = 0; p < pixels; p += 2) {
        const int two = p + 1 < pixels;
        for (int32_t g = 0; g < w->groups_or_multiplier; ++g) {
            im2col(w, in_dims, in, q->input_offset, &s, g, p / out_dims->w, p % out_dims->w, ca);
            if (two)
                im2col(w, in_dims, in, q->input_offset, &s, g, (p + 1) / out_dims->w,
                       (p + 1) % out_dims->w, cb);
            channels(&s, q, filter, bias, g, ca, cb, two, out + p * out_dims->c,
                     out + (p + 1) * out_dims->c);
        }
    }
    return DQ_OK;
}

#else
typedef int dq_conv2d_s8_dsp_unused;   /* ISO C: a translation unit is not empty */
#endif
