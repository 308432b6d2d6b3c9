/* CONV2D and FULLY_CONNECTED, FPGA fixed point, optimized set (dq_kernels.h): the same
 * integers as dq_conv2d_fx.c and dq_fully_connected_fx.c.
 *
 * The reference adds product after product into an acc_bits-wide accumulator, fitting
 * each product and each sum by the overflow mode (dq_fx_accumulate). An output
 * channel's accumulator is instead computed as a plain sum in 32-bit arithmetic when
 * that provably gives the same value:
 *   - WRAP: every fit reduces modulo 2^acc_bits, so the result is
 *     fit(fit(bias) + sum of products), and acc_bits <= 32 means the low 32 bits of the
 *     sum (a wrapping uint32 sum) decide it;
 *   - SAT: no fit ever changes a value when |fit(bias)| + 128 * sum |w| <= 2^(acc_bits
 *     - 1) - 1 (inputs are int8, |x| <= 128): every product and every partial sum lies
 *     inside the accumulator, so the result is the exact sum.
 * Other channels (SAT that could saturate) are summed as the reference does, product
 * by product. The plain sums visit each in-bounds tap once per output pixel and
 * accumulate all output channels of one group together (loops the compiler can
 * vectorize). Scratch (conv): per output channel, the sum and whether it is exact
 * (written on the first sample of each dq_invoke call, dq_ctx). */
#include <stdlib.h>

#include "dq_kernels.h"

/* whether a plain sum gives the reference accumulator (see above) */
static int sum_is_exact(const dq_requant_fx *q, int32_t bias, const int8_t *f, int32_t n) {
    if (q->acc_overflow == DQ_FX_WRAP) return 1;
    int64_t bound = llabs((int64_t)dq_fx_fit(bias, q->acc_bits, q->acc_overflow));
    for (int32_t k = 0; k < n; ++k) bound += 128 * abs(f[k]);
    return bound <= ((int64_t)1 << (q->acc_bits - 1)) - 1;
}

/* the accumulator from a plain (wrapping) sum of the products */
static int64_t from_sum(const dq_requant_fx *q, int32_t bias, uint32_t sum) {
    const uint32_t total = (uint32_t)dq_fx_fit(bias, q->acc_bits, q->acc_overflow) + sum;
    return dq_fx_fit((int32_t)total, q->acc_bits, q->acc_overflow);
}

size_t dq_conv2d_fx_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                const dq_dims *out_dims) {
    (void)w;
    (void)in_dims;
    return (size_t)out_dims->c * 2 * sizeof(int32_t);
}

/* One output of the reference loop (dq_conv2d_fx.c), for a channel that may saturate. */
static int64_t reference_acc(const dq_window *w, const dq_requant_fx *q, const dq_dims *in_dims,
                             const int8_t *in, const int8_t *filter, int32_t bias,
                             int32_t group_in, int32_t ic0, int32_t oc, int32_t oy, int32_t ox) {
    int64_t acc = dq_fx_fit(bias, q->acc_bits, q->acc_overflow);
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
    return acc;
}

/* sums[j] += the products of one tap for the group's output channels oc0 .. oc0 + n - 1 */
static void accumulate_tap(const int8_t *x, const int8_t *filter, int32_t tap, int32_t taps,
                           int32_t group_in, int32_t oc0, int32_t n, uint32_t *sums) {
    for (int32_t j = 0; j < n; ++j) {
        const int8_t *f = filter + ((oc0 + j) * taps + tap) * group_in;
        uint32_t sum = 0;
        for (int32_t ic = 0; ic < group_in; ++ic) sum += (uint32_t)(x[ic] * f[ic]);
        sums[j] += sum;
    }
}

dq_status dq_conv2d_fx_opt(const dq_ctx *ctx, const dq_window *w, const dq_requant_fx *q,
                           const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    const int32_t groups = w->groups_or_multiplier, taps = w->kernel_h * w->kernel_w;
    const int32_t group_in = in_dims->c / groups, group_out = out_dims->c / groups;
    uint32_t *sums = (uint32_t *)ctx->buffer;
    int32_t *exact = (int32_t *)ctx->buffer + out_dims->c;
    if (ctx->first_sample)
        for (int32_t oc = 0; oc < out_dims->c; ++oc)
            exact[oc] = sum_is_exact(q, bias[oc], filter + oc * taps * group_in, taps * group_in);
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox) {
            int8_t *o = out + (oy * out_dims->w + ox) * out_dims->c;
            for (int32_t oc0 = 0; oc0 < out_dims->c; oc0 += group_out) {
                const int32_t ic0 = (oc0 / group_out) * group_in;
                for (int32_t j = 0; j < group_out; ++j) sums[j] = 0;
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = oy * w->stride_h - w->pad_top + ky * w->dil_h;
                    if (iy < 0 || iy >= in_dims->h) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = ox * w->stride_w - w->pad_left + kx * w->dil_w;
                        if (ix < 0 || ix >= in_dims->w) continue;
                        accumulate_tap(in + (iy * in_dims->w + ix) * in_dims->c + ic0, filter,
                                       ky * w->kernel_w + kx, taps, group_in, oc0, group_out,
                                       sums);
                    }
                }
                for (int32_t j = 0; j < group_out; ++j) {
                    const int32_t oc = oc0 + j;
                    const int64_t acc = exact[oc] ? from_sum(q, bias[oc], sums[j])
                        : reference_acc(w, q, in_dims, in, filter, bias[oc], group_in, ic0, oc, oy, ox);
                    o[oc] = dq_fx_requantize(acc, q->shift[oc], q->quant, q->out_bits,
                                             q->out_overflow, q->act_min, q->act_max);
                }
            }
        }
    return DQ_OK;
}

dq_status dq_fully_connected_fx_opt(const dq_ctx *ctx, const dq_requant_fx *q, int32_t n_in,
                                    const int8_t *in, const int8_t *filter,
                                    const int32_t *bias, int32_t n_out, int8_t *out) {
    for (int32_t o = 0; o < n_out; ++o) {
        const int8_t *f = filter + o * n_in;
        if (!sum_is_exact(q, bias[o], f, n_in))
            return dq_fully_connected_fx(ctx, q, n_in, in, filter, bias, n_out, out);
    }
    for (int32_t o = 0; o < n_out; ++o) {
        const int8_t *f = filter + o * n_in;
        uint32_t sum = 0;
        for (int32_t i = 0; i < n_in; ++i) sum += (uint32_t)(in[i] * f[i]);
        out[o] = dq_fx_requantize(from_sum(q, bias[o], sum), q->shift[o], q->quant, q->out_bits,
                                  q->out_overflow, q->act_min, q->act_max);
    }
    return DQ_OK;
}
