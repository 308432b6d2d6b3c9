/* MEAN over H and W, int8 (LiteRT's reference QuantizedMeanOrSum, which BUILTIN_REF
 * runs for every mean): sum of raw values minus zero point * count, times a multiplier
 * that folds in_scale / out_scale and 1 / count (computed by the exporter, as the
 * kernel's Prepare/Eval do), double-rounding requantization, offset, saturation. */
#include "dq_ops.h"

dq_status dq_mean_s8(const dq_mean_s8_params *p, const dq_dims *in_dims, const int8_t *in,
                     int8_t *out) {
    const int32_t count = in_dims->h * in_dims->w;
    for (int32_t c = 0; c < in_dims->c; ++c) {
        int32_t acc = 0;
        for (int32_t i = 0; i < count; ++i) acc += in[i * in_dims->c + c];
        acc += p->in_offset * count;
        out[c] = dq_requantize_s8(acc, p->multiplier, p->shift, p->out_offset, -128, 127,
                                  p->rounding);
    }
    return DQ_OK;
}
