/* Data movement shared by both modes: concatenation, transpose, padding. Values are
 * copied unchanged (concatenated tensors share quantization parameters). */
#include <string.h>

#include "dq_ops.h"

static int32_t dim(const dq_dims *d, int32_t axis) {
    return axis == 0 ? d->h : (axis == 1 ? d->w : d->c);
}

dq_status dq_concat(int32_t axis, int32_t n_inputs, const dq_dims *in_dims,
                    const int8_t *const *in, const dq_dims *out_dims, int8_t *out) {
    int32_t outer = 1, inner_out = 1;
    for (int32_t a = 0; a < axis; ++a) outer *= dim(out_dims, a);
    for (int32_t a = axis; a < 3; ++a) inner_out *= dim(out_dims, a);
    int32_t at = 0;
    for (int32_t i = 0; i < n_inputs; ++i) {
        int32_t inner = 1;
        for (int32_t a = axis; a < 3; ++a) inner *= dim(&in_dims[i], a);
        for (int32_t o = 0; o < outer; ++o)
            memcpy(out + o * inner_out + at, in[i] + o * inner, (size_t)inner);
        at += inner;
    }
    return DQ_OK;
}

dq_status dq_transpose(const int32_t *perm, const dq_dims *in_dims, const int8_t *in,
                       int8_t *out) {
    const int32_t d[3] = {in_dims->h, in_dims->w, in_dims->c};
    const int32_t od[3] = {d[perm[0]], d[perm[1]], d[perm[2]]};
    int32_t idx[3];
    for (idx[0] = 0; idx[0] < d[0]; ++idx[0])
        for (idx[1] = 0; idx[1] < d[1]; ++idx[1])
            for (idx[2] = 0; idx[2] < d[2]; ++idx[2]) {
                const int32_t o = (idx[perm[0]] * od[1] + idx[perm[1]]) * od[2] + idx[perm[2]];
                out[o] = in[(idx[0] * d[1] + idx[1]) * d[2] + idx[2]];
            }
    return DQ_OK;
}

/* Source index of padded position i in a dimension of size n with `before` padding:
 * -1 for the constant pad; mode 1 reflects (edge not repeated), 2 mirrors (repeated). */
static int32_t pad_source(int32_t i, int32_t before, int32_t n, int32_t mode) {
    int32_t j = i - before;
    if (j >= 0 && j < n) return j;
    if (mode == 0) return -1;
    if (j < 0) return mode == 1 ? -j : -j - 1;
    return mode == 1 ? 2 * n - 2 - j : 2 * n - 1 - j;
}

dq_status dq_pad(const int32_t *p, int8_t value, const dq_dims *in_dims, const int8_t *in,
                 const dq_dims *out_dims, int8_t *out) {
    for (int32_t y = 0; y < out_dims->h; ++y) {
        const int32_t sy = pad_source(y, p[0], in_dims->h, p[6]);
        for (int32_t x = 0; x < out_dims->w; ++x) {
            const int32_t sx = pad_source(x, p[2], in_dims->w, p[6]);
            if (sy >= 0 && sx >= 0 && p[4] == 0 && p[5] == 0) {   /* a whole source pixel */
                memcpy(out + (y * out_dims->w + x) * out_dims->c,
                       in + (sy * in_dims->w + sx) * in_dims->c, (size_t)in_dims->c);
                continue;
            }
            for (int32_t c = 0; c < out_dims->c; ++c) {
                const int32_t sc = pad_source(c, p[4], in_dims->c, p[6]);
                const int inside = sy >= 0 && sx >= 0 && sc >= 0;
                out[(y * out_dims->w + x) * out_dims->c + c] =
                    inside ? in[(sy * in_dims->w + sx) * in_dims->c + sc] : value;
            }
        }
    }
    return DQ_OK;
}

dq_status dq_clamp_s8(int32_t lo, int32_t hi, int32_t n, const int8_t *in, int8_t *out) {
    for (int32_t i = 0; i < n; ++i) out[i] = (int8_t)dq_clamp(in[i], lo, hi);
    return DQ_OK;
}

dq_status dq_slice(int32_t axis, int32_t begin, const dq_dims *in_dims, const int8_t *in,
                   const dq_dims *out_dims, int8_t *out) {
    int32_t outer = 1, inner_in = 1, inner_out = 1, after = 1;
    for (int32_t a = 0; a < axis; ++a) outer *= dim(in_dims, a);
    for (int32_t a = axis + 1; a < 3; ++a) after *= dim(in_dims, a);
    inner_in = dim(in_dims, axis) * after;
    inner_out = dim(out_dims, axis) * after;
    for (int32_t o = 0; o < outer; ++o)
        memcpy(out + o * inner_out, in + o * inner_in + begin * after, (size_t)inner_out);
    return DQ_OK;
}
