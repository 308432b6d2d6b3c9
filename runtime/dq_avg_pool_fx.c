/* AVG_POOL, FPGA fixed point: the window's terms (padding counts as zero and is
 * skipped: adding 0 changes nothing) added in order ky, kx and scaled to the output by
 * dq_mean_fx_out with the divisor kernel_h * kernel_w (dq_mean_fx.c has the rule), or
 * with exclude_pad the number of terms inside the input, and in reciprocal mode its
 * reciprocal round(2^reciprocal_bits / count), half up, computed here. */
#include "dq_ops.h"

dq_status dq_avg_pool_fx(const dq_window *w, const dq_requant_fx *q,
                         const dq_mean_fx_params *mp, const dq_dims *in_dims,
                         const int8_t *in, const dq_dims *out_dims, int8_t *out) {
    const int32_t count = w->kernel_h * w->kernel_w;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox)
            for (int32_t c = 0; c < out_dims->c; ++c) {
                int64_t acc = 0;
                int32_t inside = 0;
                for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
                    const int32_t iy = oy * w->stride_h - w->pad_top + ky;
                    if (iy < 0 || iy >= in_dims->h) continue;
                    for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
                        const int32_t ix = ox * w->stride_w - w->pad_left + kx;
                        if (ix < 0 || ix >= in_dims->w) continue;
                        acc = dq_mean_fx_add(acc, in[(iy * in_dims->w + ix) * in_dims->c + c],
                                             q, mp);
                        ++inside;
                    }
                }
                dq_mean_fx_params local = *mp;
                if (mp->exclude_pad && !mp->division)
                    local.reciprocal = (int32_t)((((int64_t)1 << mp->reciprocal_bits) + inside / 2) /
                                                 inside);
                out[(oy * out_dims->w + ox) * out_dims->c + c] =
                    dq_mean_fx_out(acc, mp->exclude_pad ? inside : count, q, &local);
            }
    return DQ_OK;
}
