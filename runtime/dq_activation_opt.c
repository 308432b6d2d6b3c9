/* Optimized HARD_SWISH and LEAKY_RELU, MCU int8: a 256-entry table of the reference
 * kernel's output for every input code, then one lookup per element.
 *
 * Exactness: both reference kernels (dq_activation.c) are pointwise functions of the
 * int8 input code alone (their parameters are fixed for the op), so running the
 * reference kernel itself on the 256 codes yields, entry by entry, what it would write
 * for any element carrying that code. The table is built in the op's scratch (256
 * bytes, planned in the arena) on the first sample of a dq_invoke call and read on the
 * others (the scratch contract of dq_ops.h): no float, no heap, no static state, so the
 * same code serves the host and the Cortex-M build. */
#include "dq_kernels.h"

#define DQ_LUT_BYTES 256

size_t dq_activation_s8_lut_scratch(const dq_window *w, const dq_dims *in_dims,
                                    const dq_dims *out_dims) {
    (void)w, (void)in_dims, (void)out_dims;
    return DQ_LUT_BYTES;
}

/* table[k] := the code whose byte is k, i.e. table[(uint8_t)x] == x for every int8 x,
 * the index order of dq_lut_s8. The reference kernels then run in place on it: each
 * reads element i before it writes element i, and no other. */
static void fill_codes(int8_t *table) {
    for (int32_t k = 0; k < DQ_LUT_BYTES; ++k) table[k] = (int8_t)(k < 128 ? k : k - 256);
}

dq_status dq_hard_swish_s8_lut(const dq_ctx *ctx, const dq_hard_swish_s8_params *p,
                               int32_t n, const int8_t *in, int8_t *out) {
    int8_t *table = (int8_t *)ctx->buffer;
    if (table == NULL || ctx->bytes < DQ_LUT_BYTES) return dq_hard_swish_s8(p, n, in, out);
    if (ctx->first_sample) {
        fill_codes(table);
        dq_hard_swish_s8(p, DQ_LUT_BYTES, table, table);
    }
    return dq_lut_s8(table, n, in, out);
}

dq_status dq_leaky_relu_s8_lut(const dq_ctx *ctx, const dq_leaky_relu_s8_params *p,
                               int32_t n, const int8_t *in, int8_t *out) {
    int8_t *table = (int8_t *)ctx->buffer;
    if (table == NULL || ctx->bytes < DQ_LUT_BYTES) return dq_leaky_relu_s8(p, n, in, out);
    if (ctx->first_sample) {
        fill_codes(table);
        dq_leaky_relu_s8(p, DQ_LUT_BYTES, table, table);
    }
    return dq_lut_s8(table, n, in, out);
}
