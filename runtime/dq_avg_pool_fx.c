/* AVG_POOL, FPGA fixed point: the window sum (padding counts as zero) is multiplied by
 * reciprocal = round(2^reciprocal_bits / window_size) and shifted right by
 * reciprocal_bits plus the change of fractional bits (q->shift[0]), with the
 * quantization mode. */
#include "dq_ops.h"

dq_status dq_avg_pool_fx(const dq_window *w, const dq_requant_fx *q, int32_t reciprocal,
                         int32_t reciprocal_bits, const dq_dims *in_dims, const int8_t *in,
                         const dq_dims *out_dims, int8_t *out) {
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox)
            for (int32_t c = 0; c < out_dims->c; ++c) {
                int64_t sum = 0;
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = oy * w->stride_h - w->pad_top + ky;
                    if (iy < 0 || iy >= in_dims->h) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = ox * w->stride_w - w->pad_left + kx;
                        if (ix < 0 || ix >= in_dims->w) continue;
                        sum += in[(iy * in_dims->w + ix) * in_dims->c + c];
                    }
                }
                out[(oy * out_dims->w + ox) * out_dims->c + c] = dq_fx_requantize(
                    sum * reciprocal, reciprocal_bits + q->shift[0], q->quant, q->out_bits,
                    q->out_overflow, q->act_min, q->act_max);
            }
    return DQ_OK;
}
