/* ADD, int8 (TFLite reference integer Add): both inputs are offset, scaled up by
 * 2^left_shift, brought to a common scale, summed and requantized. */
#include "dq_ops.h"

dq_status dq_add_s8(const int32_t *p, int32_t off1, const int8_t *in1, int32_t off2,
                    const int8_t *in2, int32_t out_offset, int32_t n, int8_t *out) {
    const dq_rounding r = (dq_rounding)p[7];
    for (int32_t i = 0; i < n; ++i) {
        const int32_t a = (in1[i] + off1) * (1 << p[0]);
        const int32_t b = (in2[i] + off2) * (1 << p[0]);
        const int32_t sum = dq_mul_by_quantized_multiplier(a, p[1], p[2], r) +
                            dq_mul_by_quantized_multiplier(b, p[3], p[4], r);
        const int32_t v = dq_mul_by_quantized_multiplier(sum, p[5], p[6], r) + out_offset;
        out[i] = (int8_t)dq_clamp(v, p[8], p[9]);
    }
    return DQ_OK;
}
