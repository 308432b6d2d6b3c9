/* MAX_POOL, int8, optimized set on a core with the DSP extension (dq_arm_dsp.h): the
 * same integers as dq_pool_s8.c. 4 channels at a time: the bytewise signed maximum
 * (SSUB8 + SEL) over the in-bounds window, from -128 as the reference starts, then
 * clamped bytewise to the activation range (act_min <= act_max, dq_validate.c).
 * Remaining channels as the reference. No scratch. */
#include "dq_arm_dsp.h"
#include "dq_kernels.h"

#if DQ_DSP

static uint32_t bytes4(int32_t v) { return 0x01010101u * (uint8_t)(int8_t)v; }

dq_status dq_max_pool_s8_opt(const dq_window *w, int32_t act_min, int32_t act_max,
                             const dq_dims *in_dims, const int8_t *in,
                             const dq_dims *out_dims, int8_t *out) {
    const uint32_t lo = bytes4(act_min), hi = bytes4(act_max);
    const int32_t channels = out_dims->c, c4 = channels & ~3;
    for (int32_t oy = 0; oy < out_dims->h; ++oy)
        for (int32_t ox = 0; ox < out_dims->w; ++ox) {
            const int32_t iy0 = oy * w->stride_h - w->pad_top, ix0 = ox * w->stride_w - w->pad_left;
            const int32_t y0 = iy0 < 0 ? -iy0 : 0, x0 = ix0 < 0 ? -ix0 : 0;
            const int32_t y1 = in_dims->h - iy0 < w->kernel_h ? in_dims->h - iy0 : w->kernel_h;
            const int32_t x1 = in_dims->w - ix0 < w->kernel_w ? in_dims->w - ix0 : w->kernel_w;
            int8_t *o = out + (oy * out_dims->w + ox) * channels;
            for (int32_t c = 0; c < channels; c += c < c4 ? 4 : 1) {
                uint32_t m = 0x80808080u;
                int32_t m1 = -128;
                for (int32_t ky = y0; ky < y1; ++ky) {
                    const int32_t row = ((iy0 + ky) * in_dims->w + ix0) * channels + c;
                    for (int32_t kx = x0; kx < x1; ++kx) {
                        const int8_t *x = in + row + kx * channels;
                        if (c < c4) m = dq_max4(m, dq_load4(x));
                        else m1 = *x > m1 ? *x : m1;
                    }
                }
                if (c < c4) {
                    m = dq_min4(dq_max4(m, lo), hi);
                    memcpy(o + c, &m, 4);
                } else {
                    o[c] = (int8_t)dq_clamp(m1, act_min, act_max);
                }
            }
        }
    return DQ_OK;
}

#else
typedef int dq_max_pool_s8_dsp_unused;   /* ISO C: a translation unit is not empty */
#endif
