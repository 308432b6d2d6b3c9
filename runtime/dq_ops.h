/* dq_ops.h: kernel prototypes and the meaning of each op's params[] (dq_op).
 * Tensors are per sample, NHWC; dims are H, W, C. Arguments come in one order:
 * op params, quantization params, (dims, data) of each input, then the output.
 *
 * params[] by op type (indices):
 *   CONV2D, DEPTHWISE_CONV2D:
 *     0 stride_h  1 stride_w  2 pad_top  3 pad_left  4 dilation_h  5 dilation_w
 *     6 depth_multiplier (depthwise) or groups (conv)   7 rounding  8 act_min
 *     9 act_max  10 kernel_h  11 kernel_w  12 acc_bits (FX)  13 acc_overflow (FX)
 *     14 out_overflow (FX)
 *     data: 0 filter int8 (conv: O,kh,kw,I/groups; depthwise: kh,kw,C*M)
 *           1 bias int32 [O]   2 multiplier int32 [O] (S8)   3 shift int32 [O]
 *   FULLY_CONNECTED: 7 rounding 8 act_min 9 act_max 12-14 as conv (FX);
 *     data as conv, filter O,I
 *   ADD (S8): 0 left_shift 1 in1_mult 2 in1_shift 3 in2_mult 4 in2_shift
 *     5 out_mult 6 out_shift 7 rounding 8 act_min 9 act_max
 *   ADD (FX): 0 common_frac_bits 7 quant mode 8 act_min 9 act_max 12-14 as conv
 *   MAX_POOL, AVG_POOL: 0 stride_h 1 stride_w 2 pad_top 3 pad_left 8 act_min
 *     9 act_max 10 kernel_h 11 kernel_w
 *     (AVG_POOL FX: 7 quant mode 14 out_overflow 15 reciprocal 16 reciprocal_bits)
 *   MEAN (over H and W): 1 multiplier 2 shift (1/count folded in) 7 rounding (S8);
 *     FX: 7 quant mode 8 act_min 9 act_max 14 out_overflow 15 reciprocal
 *     16 reciprocal_bits
 *   CONCAT: 0 axis (0, 1 or 2)     RESHAPE: none     TRANSPOSE: 0..2 perm
 *   PAD: 0..5 before_h after_h before_w after_w before_c after_c, 6 mode
 *     (0: the zero point, 1: reflect, 2: symmetric, as TFLite's MIRROR_PAD)
 *   CLAMP: 8 lo 9 hi (quantized; input and output share parameters)
 *   SLICE: 0 axis 1 begin (a slice of the input along axis, as the output's size)
 * "rounding" is a dq_rounding (S8) or a dq_fx_quant (FX); overflow is dq_fx_overflow.
 */
#ifndef DQ_OPS_H
#define DQ_OPS_H

#include "dq_common.h"
#include "dq_runtime.h"

typedef struct { int32_t h, w, c; } dq_dims;

typedef struct {
    int32_t stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, kernel_h, kernel_w;
    int32_t groups_or_multiplier;
} dq_window;

typedef struct {            /* requantization to the output, MCU int8 */
    const int32_t *multiplier, *shift;   /* per output channel */
    int32_t input_offset, output_offset, act_min, act_max;
    dq_rounding rounding;
} dq_requant_s8;

typedef struct {            /* requantization to the output, FPGA fixed point */
    const int32_t *shift;   /* per output channel: frac(acc) - frac(out) */
    int32_t acc_bits, out_bits, act_min, act_max;
    dq_fx_quant quant;
    dq_fx_overflow acc_overflow, out_overflow;
} dq_requant_fx;

dq_status dq_conv2d_s8(const dq_window *w, const dq_requant_s8 *q, const dq_dims *in_dims,
                       const int8_t *in, const int8_t *filter, const int32_t *bias,
                       const dq_dims *out_dims, int8_t *out);
dq_status dq_depthwise_conv2d_s8(const dq_window *w, const dq_requant_s8 *q,
                                 const dq_dims *in_dims, const int8_t *in,
                                 const int8_t *filter, const int32_t *bias,
                                 const dq_dims *out_dims, int8_t *out);
dq_status dq_fully_connected_s8(const dq_requant_s8 *q, int32_t n_in, const int8_t *in,
                                const int8_t *filter, const int32_t *bias, int32_t n_out,
                                int8_t *out);
dq_status dq_add_s8(const int32_t *params, int32_t off1, const int8_t *in1, int32_t off2,
                    const int8_t *in2, int32_t out_offset, int32_t n, int8_t *out);
dq_status dq_max_pool_s8(const dq_window *w, int32_t act_min, int32_t act_max,
                         const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                         int8_t *out);
dq_status dq_avg_pool_s8(const dq_window *w, int32_t act_min, int32_t act_max,
                         const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                         int8_t *out);
dq_status dq_mean_s8(const int32_t *params, int32_t in_offset, int32_t out_offset,
                     const dq_dims *in_dims, const int8_t *in, int8_t *out);

dq_status dq_conv2d_fx(const dq_window *w, const dq_requant_fx *q, const dq_dims *in_dims,
                       const int8_t *in, const int8_t *filter, const int32_t *bias,
                       const dq_dims *out_dims, int8_t *out);
dq_status dq_depthwise_conv2d_fx(const dq_window *w, const dq_requant_fx *q,
                                 const dq_dims *in_dims, const int8_t *in,
                                 const int8_t *filter, const int32_t *bias,
                                 const dq_dims *out_dims, int8_t *out);
dq_status dq_fully_connected_fx(const dq_requant_fx *q, int32_t n_in, const int8_t *in,
                                const int8_t *filter, const int32_t *bias, int32_t n_out,
                                int8_t *out);
dq_status dq_add_fx(const dq_requant_fx *q, int32_t shift1, const int8_t *in1,
                    int32_t shift2, const int8_t *in2, int32_t n, int8_t *out);
dq_status dq_avg_pool_fx(const dq_window *w, const dq_requant_fx *q, int32_t reciprocal,
                         int32_t reciprocal_bits, const dq_dims *in_dims, const int8_t *in,
                         const dq_dims *out_dims, int8_t *out);
dq_status dq_mean_fx(const dq_requant_fx *q, int32_t reciprocal, int32_t reciprocal_bits,
                     const dq_dims *in_dims, const int8_t *in, int8_t *out);

/* Data movement, shared by both modes (int8 storage). */
dq_status dq_concat(int32_t axis, int32_t n_inputs, const dq_dims *in_dims,
                    const int8_t *const *in, const dq_dims *out_dims, int8_t *out);
dq_status dq_transpose(const int32_t *perm, const dq_dims *in_dims, const int8_t *in,
                       int8_t *out);
dq_status dq_pad(const int32_t *pads, int8_t value, const dq_dims *in_dims, const int8_t *in,
                 const dq_dims *out_dims, int8_t *out);
dq_status dq_clamp_s8(int32_t lo, int32_t hi, int32_t n, const int8_t *in, int8_t *out);
dq_status dq_slice(int32_t axis, int32_t begin, const dq_dims *in_dims, const int8_t *in,
                   const dq_dims *out_dims, int8_t *out);

/* Internal: running one op of a validated model (dq_invoke.c), for the profiler. */
dq_status dq_run_op(const dq_model *m, uint32_t op, uint8_t *arena);
void dq_set_input(const dq_model *m, uint8_t *arena, const int8_t *input);

/* Internal: validation (dq_validate.c) and shapes. */
int64_t dq_tensor_elems(const dq_tensor *t);
dq_status dq_check_op(const dq_model *m, const dq_op *op);
dq_dims dq_dims_of(const dq_tensor *t);

#endif
