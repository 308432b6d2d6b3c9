/* MEAN over H and W, FPGA fixed point: the sum times reciprocal = round(2^reciprocal_bits
 * / count), shifted right by reciprocal_bits plus the change of fractional bits
 * (q->shift[0]) with the quantization mode, as dq_avg_pool_fx.c. */
#include "dq_ops.h"

dq_status dq_mean_fx(const dq_requant_fx *q, int32_t reciprocal, int32_t reciprocal_bits,
                     const dq_dims *in_dims, const int8_t *in, int8_t *out) {
    const int32_t count = in_dims->h * in_dims->w;
    for (int32_t c = 0; c < in_dims->c; ++c) {
        int64_t sum = 0;
        for (int32_t i = 0; i < count; ++i) sum += in[i * in_dims->c + c];
        out[c] = dq_fx_requantize(sum * reciprocal, reciprocal_bits + q->shift[0], q->quant,
                                  q->out_bits, q->out_overflow, q->act_min, q->act_max);
    }
    return DQ_OK;
}
