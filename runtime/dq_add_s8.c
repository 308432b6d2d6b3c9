/* ADD, int8 (TFLite reference integer Add): both inputs are offset, scaled up by
 * 2^left_shift, brought to a common scale, summed and requantized. The last step adds
 * the output offset in int64 and clamps (dq_requantize_s8): with an out_multiplier
 * near 2^31 and out_shift 30 the scaled sum reaches INT32_MAX, and adding the offset
 * in int32 would overflow. */
#include "dq_ops.h"

dq_status dq_add_s8(const dq_add_s8_params *p, int32_t n, const int8_t *in1,
                    const int8_t *in2, int8_t *out) {
    const dq_rounding r = p->rounding;
    for (int32_t i = 0; i < n; ++i) {
        const int32_t a = (in1[i] + p->in1_offset) * (1 << p->left_shift);
        const int32_t b = (in2[i] + p->in2_offset) * (1 << p->left_shift);
        const int32_t sum = dq_mul_by_quantized_multiplier(a, p->in1_multiplier, p->in1_shift, r) +
                            dq_mul_by_quantized_multiplier(b, p->in2_multiplier, p->in2_shift, r);
        out[i] = dq_requantize_s8(sum, p->out_multiplier, p->out_shift, p->out_offset,
                                  p->act_min, p->act_max, r);
    }
    return DQ_OK;
}
