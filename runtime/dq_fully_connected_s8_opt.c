/* FULLY_CONNECTED, int8, optimized set (dq_kernels.h): the same integers as
 * dq_fully_connected_s8.c. On a core with the DSP extension (dq_arm_dsp.h) the input
 * is widened once into an int16 column in quad order (x + input_offset, scratch), and
 * two outputs at a time meet it with SMLAD: 8 MACs per 4 SMLAD, 4 SXTB16 and 4 loads,
 * the filter read as int8 where it lies. Elsewhere the reference kernel (deployq's
 * TFLite export writes linear layers as 1x1 CONV_2D, whose optimized kernel serves
 * them on the host). */
#include "dq_arm_dsp.h"
#include "dq_kernels.h"

#if DQ_DSP

size_t dq_fully_connected_s8_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                         const dq_dims *out_dims) {
    (void)w;
    (void)out_dims;
    return (size_t)in_dims->c * sizeof(int16_t);
}

dq_status dq_fully_connected_s8_opt(const dq_ctx *ctx, const dq_requant_s8 *q, int32_t n_in,
                                    const int8_t *in, const int8_t *filter,
                                    const int32_t *bias, int32_t n_out, int8_t *out) {
    int16_t *col = (int16_t *)ctx->buffer;
    dq_column_put(col, n_in & ~3, 0, in, n_in, q->input_offset);
    for (int32_t o = 0; o < n_out; o += 2) {
        const int32_t o1 = o + 1 < n_out ? o + 1 : o;     /* an odd last output: itself */
        int32_t acc[2] = {bias[o], bias[o1]};
        dq_dot_1x2(col, filter + o * n_in, filter + o1 * n_in, n_in, acc);
        out[o] = dq_requantize_s8_dsp(acc[0], q->multiplier[o], q->shift[o], q);
        out[o1] = dq_requantize_s8_dsp(acc[1], q->multiplier[o1], q->shift[o1], q);
    }
    return DQ_OK;
}

#else

size_t dq_fully_connected_s8_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                         const dq_dims *out_dims) {
    (void)w;
    (void)in_dims;
    (void)out_dims;
    return 0;
}

dq_status dq_fully_connected_s8_opt(const dq_ctx *ctx, const dq_requant_s8 *q, int32_t n_in,
                                    const int8_t *in, const int8_t *filter,
                                    const int32_t *bias, int32_t n_out, int8_t *out) {
    return dq_fully_connected_s8(ctx, q, n_in, in, filter, bias, n_out, out);
}

#endif
