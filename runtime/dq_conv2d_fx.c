/* CONV2D, FPGA fixed point: products of b_x-bit inputs and b_w-bit weights accumulate
 * (from the bias, aligned to frac_x + frac_w) in an acc_bits-wide accumulator, each
 * product and each addition fitted by the accumulator's overflow mode
 * (dq_fx_accumulate); the sum is shifted to the
 * output's fractional bits with the quantization mode and fitted to its width. */
#include "dq_ops.h"

dq_status dq_conv2d_fx(const dq_ctx *ctx, const dq_window *w, const dq_requant_fx *q,
                       const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                       const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    (void)ctx;
    const int32_t groups = w->groups_or_multiplier;
    const int32_t group_in = in_dims->c / groups, group_out = out_dims->c / groups;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox)
            for (int32_t oc = 0; oc < out_dims->c; ++oc) {
                const int32_t ic0 = (oc / group_out) * group_in;
                int64_t acc = dq_fx_fit(bias[oc], q->acc_bits, q->acc_overflow);
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
                    if (iy < 0 || iy >= in_dims->h) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = ox * w->stride_w - w->pad_left + kx * w->dil_w;
                        if (ix < 0 || ix >= in_dims->w) continue;
                        const int8_t *x = in + (iy * in_dims->w + ix) * in_dims->c + ic0;
                        const int8_t *f = filter + ((oc * w->kernel_h + ky) * w->kernel_w + kx) * group_in;
                        for (int32_t ic = 0; ic < group_in; ++ic)
                            acc = dq_fx_accumulate(acc, x[ic] * f[ic], q->acc_bits, q->acc_overflow);
                    }
                }
                out[(oy * out_dims->w + ox) * out_dims->c + oc] = dq_fx_requantize(
                    acc, q->shift[oc], q->quant, q->out_bits, q->out_overflow, q->act_min,
                    q->act_max);
            }
    return DQ_OK;
}
