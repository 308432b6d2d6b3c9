/* ADD, FPGA fixed point: both inputs shifted left to common fractional bits, added in
 * the accumulator (fitted by its overflow mode), requantized with q->shift[0]. */
#include "dq_ops.h"

dq_status dq_add_fx(const dq_requant_fx *q, int32_t shift1, const int8_t *in1,
                    int32_t shift2, const int8_t *in2, int32_t n, int8_t *out) {
    for (int32_t i = 0; i < n; ++i) {
        /* multiplications: a left shift of a negative value is undefined in C99 */
        const int64_t sum = (int64_t)in1[i] * ((int64_t)1 << shift1) +
                            (int64_t)in2[i] * ((int64_t)1 << shift2);
        out[i] = dq_fx_requantize(dq_fx_fit(sum, q->acc_bits, q->acc_overflow), q->shift[0],
                                  q->quant, q->out_bits, q->out_overflow, q->act_min,
                                  q->act_max);
    }
    return DQ_OK;
}
