/* MAX_POOL and AVG_POOL, int8 (TFLite reference): windows clipped to the input;
 * the average divides by the number of positions inside it, rounding half away from
 * zero. Input and output share quantization parameters. */
#include "dq_ops.h"

static int32_t pool_window(const dq_window *w, const dq_dims *d, const int8_t *in,
                           int32_t oy, int32_t ox, int32_t c, int is_max, int32_t *count) {
    int32_t acc = is_max ? -128 : 0;
    *count = 0;
    for (int32_t ky = 0; ky < w->kernel_h; ++ky) {
        const int32_t iy = oy * w->stride_h - w->pad_top + ky;
        if (iy < 0 || iy >= d->h) continue;
        for (int32_t kx = 0; kx < w->kernel_w; ++kx) {
            const int32_t ix = ox * w->stride_w - w->pad_left + kx;
            if (ix < 0 || ix >= d->w) continue;
            const int32_t x = in[(iy * d->w + ix) * d->c + c];
            acc = is_max ? (x > acc ? x : acc) : acc + x;
            ++*count;
        }
    }
    return acc;
}

static dq_status pool(const dq_window *w, int32_t act_min, int32_t act_max,
                      const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                      int8_t *out, int is_max) {
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox)
            for (int32_t c = 0; c < out_dims->c; ++c) {
                int32_t count;
                int32_t v = pool_window(w, in_dims, in, oy, ox, c, is_max, &count);
                if (!is_max) v = count ? dq_div_round_away(v, count) : 0;
                out[(oy * out_dims->w + ox) * out_dims->c + c] = (int8_t)dq_clamp(v, act_min, act_max);
            }
    return DQ_OK;
}

dq_status dq_max_pool_s8(const dq_window *w, int32_t act_min, int32_t act_max,
                         const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                         int8_t *out) {
    return pool(w, act_min, act_max, in_dims, in, out_dims, out, 1);
}

dq_status dq_avg_pool_s8(const dq_window *w, int32_t act_min, int32_t act_max,
                         const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                         int8_t *out) {
    return pool(w, act_min, act_max, in_dims, in, out_dims, out, 0);
}
