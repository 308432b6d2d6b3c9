/* FULLY_CONNECTED, FPGA fixed point: as dq_conv2d_fx.c for a vector (filter O, I). */
#include "dq_ops.h"

dq_status dq_fully_connected_fx(const dq_ctx *ctx, const dq_requant_fx *q, int32_t n_in,
                                const int8_t *in, const int8_t *filter, const int32_t *bias,
                                int32_t n_out, int8_t *out) {
    (void)ctx;
    for (int32_t o = 0; o < n_out; ++o) {
        int64_t acc = dq_fx_fit(bias[o], q->acc_bits, q->acc_overflow);
        for (int32_t i = 0; i < n_in; ++i)
            acc = dq_fx_accumulate(acc, in[i] * filter[o * n_in + i], q->acc_bits,
                                   q->acc_overflow);
        out[o] = dq_fx_requantize(acc, q->shift[o], q->quant, q->out_bits, q->out_overflow,
                                  q->act_min, q->act_max);
    }
    return DQ_OK;
}
