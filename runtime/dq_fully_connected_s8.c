/* FULLY_CONNECTED, int8, TFLite Micro style: fixed-point requantization. LiteRT's
 * reference kernel rescales in double instead (docs/tflite-int8-arithmetic.md, 7), so
 * the two may part by an LSB; deployq's TFLite export writes linear layers as 1x1
 * CONV_2D and never reaches this kernel from a .tflite. */
#include "dq_ops.h"

dq_status dq_fully_connected_s8(const dq_ctx *ctx, const dq_requant_s8 *q, int32_t n_in,
                                const int8_t *in, const int8_t *filter, const int32_t *bias,
                                int32_t n_out, int8_t *out) {
    (void)ctx;
    for (int32_t o = 0; o < n_out; ++o) {
        const int8_t *f = filter + o * n_in;
        int32_t acc = 0;
        for (int32_t i = 0; i < n_in; ++i) acc += (in[i] + q->input_offset) * f[i];
        acc += bias[o];
        out[o] = dq_requantize_s8(acc, q->multiplier[o], q->shift[o], q->output_offset,
                                  q->act_min, q->act_max, q->rounding);
    }
    return DQ_OK;
}
