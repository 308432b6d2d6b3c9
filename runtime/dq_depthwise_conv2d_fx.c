/* DEPTHWISE_CONV2D, FPGA fixed point: as dq_conv2d_fx.c, output channel
 * oc = ic * depth_multiplier + m reading input channel ic. */
#include "dq_ops.h"

dq_status dq_depthwise_conv2d_fx(const dq_ctx *ctx, const dq_window *w,
                                 const dq_requant_fx *q, const dq_dims *in_dims,
                                 const int8_t *in, const int8_t *filter, const int32_t *bias,
                                 const dq_dims *out_dims, int8_t *out) {
    (void)ctx;
    const int32_t mult = w->groups_or_multiplier;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox)
            for (int32_t oc = 0; oc < out_dims->c; ++oc) {
                int64_t acc = dq_fx_fit(bias[oc], q->acc_bits, q->acc_overflow);
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
                    if (iy < 0 || iy >= in_dims->h) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = ox * w->stride_w - w->pad_left + kx * w->dil_w;
                        if (ix < 0 || ix >= in_dims->w) continue;
                        const int32_t x = in[(iy * in_dims->w + ix) * in_dims->c + oc / mult];
                        const int32_t f = filter[(ky * w->kernel_w + kx) * out_dims->c + oc];
                        acc = dq_fx_accumulate(acc, x * f, q->acc_bits, q->acc_overflow);
                    }
                }
                out[(oy * out_dims->w + ox) * out_dims->c + oc] = dq_fx_requantize(
                    acc, q->shift[oc], q->quant, q->out_bits, q->out_overflow, q->act_min,
                    q->act_max);
            }
    return DQ_OK;
}
