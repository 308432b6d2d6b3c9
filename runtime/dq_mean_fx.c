/* MEAN over H and W, FPGA fixed point, and the mean step shared with dq_avg_pool_fx.c.
 * pool_division 1 (divide, hls4ml's avg()): acc = 0; acc = fit(acc + (x << guard_bits))
 * per term in order (pixels row-major), in the accumulator (acc_bits, acc_overflow);
 * then acc / count truncated toward zero, requantized by q->shift[0] (frac_in +
 * guard_bits - frac_out). pool_division 0 (reciprocal): the exact sum times reciprocal
 * = round(2^reciprocal_bits / count), shifted right by reciprocal_bits + q->shift[0]. */
#include "dq_ops.h"

int64_t dq_mean_fx_add(int64_t acc, int32_t x, const dq_requant_fx *q,
                       const dq_mean_fx_params *mp) {
    if (!mp->division) return acc + x;
    /* a multiplication: a left shift of a negative value is undefined in C99 */
    return dq_fx_fit(acc + (int64_t)x * ((int64_t)1 << mp->guard_bits), q->acc_bits,
                     q->acc_overflow);
}

int8_t dq_mean_fx_out(int64_t acc, int32_t count, const dq_requant_fx *q,
                      const dq_mean_fx_params *mp) {
    if (mp->division)
        return dq_fx_requantize(dq_fx_divide(acc, count), q->shift[0], q->quant, q->out_bits,
                                q->out_overflow, q->act_min, q->act_max);
    return dq_fx_requantize(acc * mp->reciprocal, mp->reciprocal_bits + q->shift[0], q->quant,
                            q->out_bits, q->out_overflow, q->act_min, q->act_max);
}

dq_status dq_mean_fx(const dq_requant_fx *q, const dq_mean_fx_params *mp,
                     const dq_dims *in_dims, const int8_t *in, int8_t *out) {
    const int32_t count = in_dims->h * in_dims->w;
    for (int32_t c = 0; c < in_dims->c; ++c) {
        int64_t acc = 0;
        for (int32_t i = 0; i < count; ++i) acc = dq_mean_fx_add(acc, in[i * in_dims->c + c], q, mp);
        out[c] = dq_mean_fx_out(acc, count, q, mp);
    }
    return DQ_OK;
}
