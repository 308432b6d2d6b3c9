/* MUL, int8 (TFLite reference integer Mul and BroadcastMul6DSlow): per output element,
 * (in1 + in1_offset) * (in2 + in2_offset) scaled by the output multiplier, plus the
 * output offset (added in int64 by dq_requantize_s8, as ADD), clamped to the
 * activation range. An input dimension of 1 broadcasts (dq_broadcast_index). */
#include "dq_ops.h"

dq_status dq_mul_s8(const dq_mul_s8_params *p, const dq_dims *d1, const int8_t *in1,
                    const dq_dims *d2, const int8_t *in2, const dq_dims *out_dims,
                    int8_t *out) {
    int32_t i = 0;
    for (int32_t h = 0; h < out_dims->h; ++h)
        for (int32_t w = 0; w < out_dims->w; ++w)
            for (int32_t c = 0; c < out_dims->c; ++c, ++i) {
                const int32_t a = in1[dq_broadcast_index(d1, h, w, c)] + p->in1_offset;
                const int32_t b = in2[dq_broadcast_index(d2, h, w, c)] + p->in2_offset;
                out[i] = dq_requantize_s8(a * b, p->multiplier, p->shift, p->out_offset,
                                          p->act_min, p->act_max, p->rounding);
            }
    return DQ_OK;
}
