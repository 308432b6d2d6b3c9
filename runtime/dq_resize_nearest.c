/* RESIZE_NEAREST_NEIGHBOR (TFLite reference ResizeNearestNeighbor without
 * align_corners or half_pixel_centers), both modes: a copy of codes. The output is
 * s times the input along H and W (s an integer); output row y reads input row y / s.
 * The reference computes floor(y * (float)in / (float)out) in float; for integer
 * factors that is y / s exactly (tests/runtime/test_struct_ops.py checks every size up
 * to 1024 and factor up to 16), and this kernel stays free of float arithmetic. */
#include <string.h>

#include "dq_ops.h"

dq_status dq_resize_nearest(const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                            int8_t *out) {
    const int32_t sh = out_dims->h / in_dims->h, sw = out_dims->w / in_dims->w;
    const int32_t c = out_dims->c;
    for (int32_t y = 0; y < out_dims->h; ++y)
        for (int32_t x = 0; x < out_dims->w; ++x)
            memcpy(out + ((size_t)y * out_dims->w + x) * c,
                   in + ((size_t)(y / sh) * in_dims->w + x / sw) * c, (size_t)c);
    return DQ_OK;
}
