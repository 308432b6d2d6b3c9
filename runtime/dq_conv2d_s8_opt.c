/* CONV2D, int8, optimized set (dq_kernels.h): the same integers as dq_conv2d_s8.c.
 * The loops visit each in-bounds kernel tap once per output pixel and accumulate all
 * output channels of one group together, in int32 accumulators kept in the kernel's
 * scratch memory (4 bytes per output channel). Integer addition is exact here (no
 * overflow: dq_validate.c bounds the taps and biases), so the order does not matter. */
#include "dq_kernels.h"

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
