/* RESIZE_NEAREST_NEIGHBOR (TFLite reference ResizeNearestNeighbor), both modes: a copy
 * of codes. Output row y reads input row GetNearestNeighbor(y): with scale = in / out
 * in float ((in - 1) / (out - 1) with align_corners and out > 1) and offset 0.5 with
 * half_pixel_centers, else 0: round((y + offset) * scale) (half away from zero) with
 * align_corners, else floor((y + offset) * scale); then at most in - 1 (and at least 0
 * with half_pixel_centers). Columns the same. All in float, as the reference. */
#include <math.h>
#include <string.h>

#include "dq_ops.h"

static int32_t nearest(int32_t y, int32_t in, int32_t out, int32_t align, int32_t half) {
    const float scale = (align && out > 1) ? (float)(in - 1) / (float)(out - 1)
                                           : (float)in / (float)out;
    const float v = ((float)y + (half ? 0.5f : 0.0f)) * scale;
    int32_t src = align ? (int32_t)roundf(v) : (int32_t)floorf(v);
    src = src < in - 1 ? src : in - 1;
    return half && src < 0 ? 0 : src;
}

dq_status dq_resize_nearest(int32_t align_corners, int32_t half_pixel_centers,
                            const dq_dims *in_dims, const int8_t *in,
                            const dq_dims *out_dims, int8_t *out) {
    const int32_t c = out_dims->c;
    for (int32_t y = 0; y < out_dims->h; ++y) {
        const int32_t sy = nearest(y, in_dims->h, out_dims->h, align_corners, half_pixel_centers);
        for (int32_t x = 0; x < out_dims->w; ++x) {
            const int32_t sx = nearest(x, in_dims->w, out_dims->w, align_corners,
                                       half_pixel_centers);
            memcpy(out + ((size_t)y * out_dims->w + x) * c,
                   in + ((size_t)sy * in_dims->w + sx) * c, (size_t)c);
        }
    }
    return DQ_OK;
}
