/* CONV2D, FPGA fixed point: products of b_x-bit inputs and b_w-bit weights accumulate
 * (from the bias, aligned to frac_x + frac_w) in an acc_bits-wide accumulator, each
 * addition fitted by the accumulator's overflow mode; the sum is shifted to the
 * output's fractional bits with the quantization mode and fitted to its width. */
#include "dq_ops.h"

static int8_t requant_fx(int64_t acc, int32_t shift, const dq_requant_fx *q) {
    const int32_t v = dq_fx_fit(dq_fx_shift(acc, shift, q->quant), q->out_bits, q->out_overflow);
    return (int8_t)dq_clamp(v, q->act_min, q->act_max);
}

dq_status dq_conv2d_fx(const dq_window *w, const dq_requant_fx *q, const dq_dims *in_dims,
                       const int8_t *in, const int8_t *filter, const int32_t *bias,
                       const dq_dims *out_dims, int8_t *out) {
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
                            acc = dq_fx_fit(acc + x[ic] * f[ic], q->acc_bits, q->acc_overflow);
                    }
                }
                out[(oy * out_dims->w + ox) * out_dims->c + oc] = requant_fx(acc, q->shift[oc], q);
            }
    return DQ_OK;
}

dq_status dq_depthwise_conv2d_fx(const dq_window *w, const dq_requant_fx *q,
                                 const dq_dims *in_dims, const int8_t *in,
                                 const int8_t *filter, const int32_t *bias,
                                 const dq_dims *out_dims, int8_t *out) {
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
                        acc = dq_fx_fit(acc + x * f, q->acc_bits, q->acc_overflow);
                    }
                }
                out[(oy * out_dims->w + ox) * out_dims->c + oc] = requant_fx(acc, q->shift[oc], q);
            }
    return DQ_OK;
}

dq_status dq_fully_connected_fx(const dq_requant_fx *q, int32_t n_in, const int8_t *in,
                                const int8_t *filter, const int32_t *bias, int32_t n_out,
                                int8_t *out) {
    for (int32_t o = 0; o < n_out; ++o) {
        int64_t acc = dq_fx_fit(bias[o], q->acc_bits, q->acc_overflow);
        for (int32_t i = 0; i < n_in; ++i)
            acc = dq_fx_fit(acc + in[i] * filter[o * n_in + i], q->acc_bits, q->acc_overflow);
        out[o] = requant_fx(acc, q->shift[o], q);
    }
    return DQ_OK;
}

/* ADD: both inputs shifted left to common fractional bits, added in the accumulator. */
dq_status dq_add_fx(const dq_requant_fx *q, int32_t shift1, const int8_t *in1,
                    int32_t shift2, const int8_t *in2, int32_t n, int8_t *out) {
    for (int32_t i = 0; i < n; ++i) {
        /* multiplications: a left shift of a negative value is undefined in C99 */
        const int64_t sum = (int64_t)in1[i] * ((int64_t)1 << shift1) +
                            (int64_t)in2[i] * ((int64_t)1 << shift2);
        out[i] = requant_fx(dq_fx_fit(sum, q->acc_bits, q->acc_overflow), q->shift[0], q);
    }
    return DQ_OK;
}
