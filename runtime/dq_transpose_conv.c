/* TRANSPOSE_CONV (groups 1), S8 and FX. TFLite's reference kernel scatters: input pixel
 * (iy, ix) adds x * w[oc, ky, kx, ic] into output (iy * stride - pad + ky, ...), positions
 * outside the output dropped, then adds the bias and requantizes per channel
 * (docs/tflite-int8-arithmetic.md). Here the same sums are gathered per output element:
 * the output row oy takes the taps ky with (oy + pad - ky) a multiple of the stride and
 * the row (oy + pad - ky) / stride inside the input. Integer sums do not depend on the
 * order (S8: dq_validate.c bounds them below 2^31). FX adds in the order ky, kx, input
 * channel with dq_fx_accumulate, as fixedpoint.conv_transpose (its NumPy twin).
 * Filter layout as CONV2D: O, kh, kw, I. */
#include "dq_ops.h"

/* the input index feeding output o through tap k, or -1 */
static int32_t source(int32_t o, int32_t k, int32_t stride, int32_t pad, int32_t size) {
    const int32_t t = o + pad - k;
    if (t < 0 || t % stride != 0 || t / stride >= size) return -1;
    return t / stride;
}

dq_status dq_transpose_conv_s8(const dq_window *w, const dq_requant_s8 *q,
                               const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                               const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    const int32_t c_in = in_dims->c;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox)
            for (int32_t oc = 0; oc < out_dims->c; ++oc) {
                int32_t acc = 0;
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = source(oy, ky, w->stride_h, w->pad_top, in_dims->h);
                    if (iy < 0) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = source(ox, kx, w->stride_w, w->pad_left, in_dims->w);
                        if (ix < 0) continue;
                        const int8_t *x = in + (iy * in_dims->w + ix) * c_in;
                        const int8_t *f =
                            filter + ((oc * w->kernel_h + ky) * w->kernel_w + kx) * c_in;
                        for (int32_t ic = 0; ic < c_in; ++ic)
                            acc += (x[ic] + q->input_offset) * f[ic];
                    }
                }
                acc += bias[oc];
                out[(oy * out_dims->w + ox) * out_dims->c + oc] = dq_requantize_s8(
                    acc, q->multiplier[oc], q->shift[oc], q->output_offset, q->act_min,
                    q->act_max, q->rounding);
            }
    return DQ_OK;
}

dq_status dq_transpose_conv_fx(const dq_window *w, const dq_requant_fx *q,
                               const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                               const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    const int32_t c_in = in_dims->c;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox)
            for (int32_t oc = 0; oc < out_dims->c; ++oc) {
                int64_t acc = dq_fx_fit(bias[oc], q->acc_bits, q->acc_overflow);
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = source(oy, ky, w->stride_h, w->pad_top, in_dims->h);
                    if (iy < 0) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = source(ox, kx, w->stride_w, w->pad_left, in_dims->w);
                        if (ix < 0) continue;
                        const int8_t *x = in + (iy * in_dims->w + ix) * c_in;
                        const int8_t *f =
                            filter + ((oc * w->kernel_h + ky) * w->kernel_w + kx) * c_in;
                        for (int32_t ic = 0; ic < c_in; ++ic)
                            acc = dq_fx_accumulate(acc, x[ic] * f[ic], q->acc_bits,
                                                   q->acc_overflow);
                    }
                }
                out[(oy * out_dims->w + ox) * out_dims->c + oc] = dq_fx_requantize(
                    acc, q->shift[oc], q->quant, q->out_bits, q->out_overflow, q->act_min,
                    q->act_max);
            }
    return DQ_OK;
}
