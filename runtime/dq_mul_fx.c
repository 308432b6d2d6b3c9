/* MUL, FPGA fixed point: the exact product (frac_in1 + frac_in2 fractional bits, at
 * most 2^14 in magnitude) fitted into the accumulator by its overflow mode, then
 * requantized with q->shift[0] = frac_in1 + frac_in2 - frac_out. An input dimension of
 * 1 broadcasts (dq_broadcast_index). */
#include "dq_ops.h"

dq_status dq_mul_fx(const dq_requant_fx *q, const dq_dims *d1, const int8_t *in1,
                    const dq_dims *d2, const int8_t *in2, const dq_dims *out_dims,
                    int8_t *out) {
    int32_t i = 0;
    for (int32_t h = 0; h < out_dims->h; ++h)
        for (int32_t w = 0; w < out_dims->w; ++w)
            for (int32_t c = 0; c < out_dims->c; ++c, ++i) {
                const int64_t prod = (int64_t)in1[dq_broadcast_index(d1, h, w, c)] *
                                     in2[dq_broadcast_index(d2, h, w, c)];
                out[i] = dq_fx_requantize(dq_fx_fit(prod, q->acc_bits, q->acc_overflow),
                                          q->shift[0], q->quant, q->out_bits,
                                          q->out_overflow, q->act_min, q->act_max);
            }
    return DQ_OK;
}
