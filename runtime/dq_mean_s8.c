/* MEAN over H and W, int8 (LiteRT's reference QuantizedMeanOrSum, which BUILTIN_REF
 * runs for every mean): sum of raw values minus zero point * count, times a multiplier
 * that folds in_scale / out_scale and 1 / count (computed by the exporter, as the
 * kernel's Prepare/Eval do), double-rounding requantization, offset, saturation. */
#include "dq_ops.h"

dq_status dq_mean_s8(const int32_t *p, int32_t in_offset, int32_t out_offset,
                     const dq_dims *in_dims, const int8_t *in, int8_t *out) {
    const int32_t count = in_dims->h * in_dims->w;
    for (int32_t c = 0; c < in_dims->c; ++c) {
        int32_t acc = 0;
        for (int32_t i = 0; i < count; ++i) acc += in[i * in_dims->c + c];
        acc += in_offset * count;
        const int64_t v = (int64_t)dq_mul_by_quantized_multiplier(acc, p[1], p[2], (dq_rounding)p[7]) + out_offset;
        out[c] = (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
    }
    return DQ_OK;
}
