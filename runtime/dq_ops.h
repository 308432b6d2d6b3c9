/* dq_ops.h: reference kernel prototypes and the meaning of each op's params[] (dq_op).
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
 *     (AVG_POOL FX: 7 quant mode 14 out_overflow 15 reciprocal 16 reciprocal_bits
 *      17 pool_division (0 reciprocal, 1 divide) 18 guard_bits, 12-13 the divide
 *      mode's accumulator: dq_mean_fx_params; 19 exclude_pad: 1 divides by each
 *      window's elements inside the input, its reciprocal computed per window)
 *   MEAN (over H and W): 1 multiplier 2 shift (1/count folded in) 7 rounding (S8);
 *     FX: 7 quant mode 8 act_min 9 act_max 14 out_overflow, 12-13 and 15-18 as
 *     AVG_POOL
 *   CONCAT: 0 axis (0, 1 or 2)     RESHAPE: none     TRANSPOSE: 0..2 perm
 *   PAD: 0..5 before_h after_h before_w after_w before_c after_c, 6 mode
 *     (0: the zero point, 1: reflect, 2: symmetric, as TFLite's MIRROR_PAD)
 *   CLAMP: 8 lo 9 hi (quantized; input and output share parameters)
 *   MUL (S8): 1 multiplier 2 shift 7 rounding 8 act_min 9 act_max;
 *     FX: 7 quant mode 8 act_min 9 act_max 12-14 as conv. Two inputs, each of the
 *     output's dims or broadcasting a dimension of 1. S8 with one input: the second
 *     is the constant int8 data 0, of dims 4-6 (h, w, c) and zero point 3.
 *   SLICE: 0 axis 1 begin (a slice of the input along axis, as the output's size)
 *   LOGISTIC, TANH (S8), and all four activations (FX): data 0 the table, int8 [256],
 *     indexed by the input code as uint8 (TFLite's int8 LUT order: 0..127, -128..-1)
 *   HARD_SWISH (S8): 0 output_multiplier_int16 1 output_exponent (<= 0)
 *     2 reluish_multiplier_int16 3 reluish_exponent (TFLite's HardSwishParams)
 *   LEAKY_RELU (S8): 1 identity_multiplier 2 identity_shift 3 alpha_multiplier
 *     4 alpha_shift 7 rounding 8 act_min 9 act_max (also TFLite's RELU, RELU6,
 *     RELU_N1_TO_1, RELU_0_TO_1 when input and output are quantized differently:
 *     both multipliers the identity's, the range the activation's)
 *   TRANSPOSE_CONV: params and data as CONV2D (groups 1, no dilation; pad_top and
 *     pad_left crop the full transposed output's leading rows and columns)
 *   RESIZE_NEAREST: none; the output an integer multiple of the input along H and W
 *     (nearest neighbour, output row y reads row y / s); input and output share
 *     parameters
 * "rounding" is a dq_rounding (S8) or a dq_fx_quant (FX); overflow is dq_fx_overflow.
 */
#ifndef DQ_OPS_H
#define DQ_OPS_H

#include "dq_common.h"
#include "dq_runtime.h"

/* params[] slots by name; deployq/rtformat.py SLOT holds the same table (a test parses
 * this enum against it). Slots are reused across op types, as listed above. */
typedef enum {
    DQ_P_STRIDE_H = 0, DQ_P_STRIDE_W = 1, DQ_P_PAD_TOP = 2, DQ_P_PAD_LEFT = 3,
    DQ_P_DILATION_H = 4, DQ_P_DILATION_W = 5, DQ_P_GROUPS = 6, DQ_P_ROUNDING = 7,
    DQ_P_ACT_MIN = 8, DQ_P_ACT_MAX = 9, DQ_P_KERNEL_H = 10, DQ_P_KERNEL_W = 11,
    DQ_P_ACC_BITS = 12, DQ_P_ACC_OVERFLOW = 13, DQ_P_OUT_OVERFLOW = 14,
    DQ_P_RECIPROCAL = 15, DQ_P_RECIPROCAL_BITS = 16, DQ_P_POOL_DIVISION = 17,
    DQ_P_GUARD_BITS = 18, DQ_P_EXCLUDE_PAD = 19,
    /* ADD (S8) */
    DQ_P_LEFT_SHIFT = 0, DQ_P_IN1_MULTIPLIER = 1, DQ_P_IN1_SHIFT = 2,
    DQ_P_IN2_MULTIPLIER = 3, DQ_P_IN2_SHIFT = 4, DQ_P_OUT_MULTIPLIER = 5,
    DQ_P_OUT_SHIFT = 6,
    /* ADD (FX) */
    DQ_P_COMMON_FRAC_BITS = 0,
    /* MEAN, MUL (S8) */
    DQ_P_MULTIPLIER = 1, DQ_P_SHIFT = 2,
    /* MUL by a constant (S8) */
    DQ_P_CONST_ZERO_POINT = 3, DQ_P_CONST_H = 4, DQ_P_CONST_W = 5, DQ_P_CONST_C = 6,
    /* CONCAT, SLICE, TRANSPOSE, PAD */
    DQ_P_AXIS = 0, DQ_P_BEGIN = 1, DQ_P_PERM_0 = 0, DQ_P_PERM_1 = 1, DQ_P_PERM_2 = 2,
    DQ_P_BEFORE_H = 0, DQ_P_AFTER_H = 1, DQ_P_BEFORE_W = 2, DQ_P_AFTER_W = 3,
    DQ_P_BEFORE_C = 4, DQ_P_AFTER_C = 5, DQ_P_PAD_MODE = 6,
    /* HARD_SWISH (S8) */
    DQ_P_OUTPUT_MULTIPLIER_INT16 = 0, DQ_P_OUTPUT_EXPONENT = 1,
    DQ_P_RELUISH_MULTIPLIER_INT16 = 2, DQ_P_RELUISH_EXPONENT = 3,
    /* LEAKY_RELU (S8) */
    DQ_P_IDENTITY_MULTIPLIER = 1, DQ_P_IDENTITY_SHIFT = 2, DQ_P_ALPHA_MULTIPLIER = 3,
    DQ_P_ALPHA_SHIFT = 4,
} dq_param_slot;

typedef struct { int32_t h, w, c; } dq_dims;

/* Shapes, inline so that loader, validator and kernels share them without a link
 * dependency. */
static inline int64_t dq_tensor_elems(const dq_tensor *t) {
    return (int64_t)t->dims[0] * t->dims[1] * t->dims[2];
}

static inline dq_dims dq_dims_of(const dq_tensor *t) {
    dq_dims d = {t->dims[0], t->dims[1], t->dims[2]};
    return d;
}

/* The element of a tensor of dims d read at output position (h, w, c) when each of its
 * dimensions equals the output's or is 1 (broadcast). */
static inline int32_t dq_broadcast_index(const dq_dims *d, int32_t h, int32_t w, int32_t c) {
    return ((d->h == 1 ? 0 : h) * d->w + (d->w == 1 ? 0 : w)) * d->c + (d->c == 1 ? 0 : c);
}

/* A kernel's context: the scratch memory it asked for (dq_kernels.h, *_scratch),
 * planned in the arena at load time; NULL with 0 bytes when it asked for none. The
 * scratch belongs to its op for the whole of one dq_invoke call: on first_sample (the
 * first sample of the call) the kernel must write what it reads back later (e.g. a
 * packed filter); on the other samples it finds there what it left. */
typedef struct {
    void *buffer;
    int32_t bytes;
    int32_t first_sample;
} dq_ctx;

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

typedef struct {            /* ADD, MCU int8 (TFLite's ArithmeticParams) */
    int32_t left_shift;                         /* [0, 20] */
    int32_t in1_offset, in1_multiplier, in1_shift;   /* shifts in [-31, 0] */
    int32_t in2_offset, in2_multiplier, in2_shift;
    int32_t out_offset, out_multiplier, out_shift;   /* out_shift in [-31, 30] */
    int32_t act_min, act_max;
    dq_rounding rounding;
} dq_add_s8_params;

typedef struct {            /* MUL, MCU int8 (TFLite's ArithmeticParams) */
    int32_t in1_offset, in2_offset, out_offset;
    int32_t multiplier, shift;       /* s_in1 * s_in2 / s_out; shift in [-31, 30] */
    int32_t act_min, act_max;
    dq_rounding rounding;
} dq_mul_s8_params;

typedef struct {            /* MEAN over H and W, MCU int8 */
    int32_t in_offset, out_offset;
    int32_t multiplier, shift;       /* in_scale / out_scale / count, folded */
    dq_rounding rounding;
} dq_mean_s8_params;

typedef struct {            /* AVG_POOL and MEAN, FPGA fixed point (params 15-18) */
    int32_t reciprocal, reciprocal_bits;   /* division 0: sum * reciprocal >> bits */
    int32_t division;       /* 0 reciprocal, 1 divide: the sum << guard_bits in the
                               accumulator (q->acc_bits, q->acc_overflow), / count
                               truncated toward zero (ap_fixed, hls4ml's avg()) */
    int32_t guard_bits;     /* extra fractional bits of the accumulator, 0..8 */
    int32_t exclude_pad;    /* AVG_POOL: 1 divides by the window's elements inside the
                               input (count_include_pad=False), else by kh * kw */
} dq_mean_fx_params;

/* Reference kernels: plain loops, the specification every optimized kernel
 * (dq_kernels.h) must reproduce bit for bit. */
dq_status dq_conv2d_s8(const dq_ctx *ctx, const dq_window *w, const dq_requant_s8 *q,
                       const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                       const int32_t *bias, const dq_dims *out_dims, int8_t *out);
dq_status dq_depthwise_conv2d_s8(const dq_ctx *ctx, const dq_window *w,
                                 const dq_requant_s8 *q, const dq_dims *in_dims,
                                 const int8_t *in, const int8_t *filter, const int32_t *bias,
                                 const dq_dims *out_dims, int8_t *out);
dq_status dq_fully_connected_s8(const dq_ctx *ctx, const dq_requant_s8 *q, int32_t n_in,
                                const int8_t *in, const int8_t *filter, const int32_t *bias,
                                int32_t n_out, int8_t *out);
dq_status dq_add_s8(const dq_add_s8_params *p, int32_t n, const int8_t *in1,
                    const int8_t *in2, int8_t *out);
dq_status dq_mul_s8(const dq_mul_s8_params *p, const dq_dims *d1, const int8_t *in1,
                    const dq_dims *d2, const int8_t *in2, const dq_dims *out_dims,
                    int8_t *out);
dq_status dq_max_pool_s8(const dq_window *w, int32_t act_min, int32_t act_max,
                         const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                         int8_t *out);
dq_status dq_avg_pool_s8(const dq_window *w, int32_t act_min, int32_t act_max,
                         const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                         int8_t *out);
dq_status dq_mean_s8(const dq_mean_s8_params *p, const dq_dims *in_dims, const int8_t *in,
                     int8_t *out);

dq_status dq_conv2d_fx(const dq_ctx *ctx, const dq_window *w, const dq_requant_fx *q,
                       const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                       const int32_t *bias, const dq_dims *out_dims, int8_t *out);
dq_status dq_depthwise_conv2d_fx(const dq_ctx *ctx, const dq_window *w,
                                 const dq_requant_fx *q, const dq_dims *in_dims,
                                 const int8_t *in, const int8_t *filter, const int32_t *bias,
                                 const dq_dims *out_dims, int8_t *out);
dq_status dq_fully_connected_fx(const dq_ctx *ctx, const dq_requant_fx *q, int32_t n_in,
                                const int8_t *in, const int8_t *filter, const int32_t *bias,
                                int32_t n_out, int8_t *out);
dq_status dq_add_fx(const dq_requant_fx *q, int32_t shift1, const int8_t *in1,
                    int32_t shift2, const int8_t *in2, int32_t n, int8_t *out);
dq_status dq_mul_fx(const dq_requant_fx *q, const dq_dims *d1, const int8_t *in1,
                    const dq_dims *d2, const int8_t *in2, const dq_dims *out_dims,
                    int8_t *out);
dq_status dq_avg_pool_fx(const dq_window *w, const dq_requant_fx *q,
                         const dq_mean_fx_params *mp, const dq_dims *in_dims,
                         const int8_t *in, const dq_dims *out_dims, int8_t *out);
dq_status dq_mean_fx(const dq_requant_fx *q, const dq_mean_fx_params *mp,
                     const dq_dims *in_dims, const int8_t *in, int8_t *out);
/* The shared step of both: terms added (in order) and scaled to the output. */
int64_t dq_mean_fx_add(int64_t acc, int32_t x, const dq_requant_fx *q,
                       const dq_mean_fx_params *mp);
int8_t dq_mean_fx_out(int64_t acc, int32_t count, const dq_requant_fx *q,
                      const dq_mean_fx_params *mp);

typedef struct {            /* HARD_SWISH, MCU int8 (TFLite's HardSwishParams) */
    int32_t input_zero_point, output_zero_point;
    int16_t output_multiplier, reluish_multiplier;   /* Q0.15 */
    int32_t output_exponent, reluish_exponent;       /* output_exponent in [-15, 0] */
} dq_hard_swish_s8_params;

typedef struct {            /* LEAKY_RELU (and RELU with a requantization), MCU int8 */
    int32_t input_offset, output_offset;
    int32_t identity_multiplier, identity_shift, alpha_multiplier, alpha_shift;
    int32_t act_min, act_max;
    dq_rounding rounding;
} dq_leaky_relu_s8_params;

/* Pointwise activations (dq_activation.c). dq_lut_s8 serves LOGISTIC and TANH in
 * both modes and every activation in FX mode: out = table[(uint8_t)in]. */
dq_status dq_lut_s8(const int8_t *table, int32_t n, const int8_t *in, int8_t *out);
dq_status dq_hard_swish_s8(const dq_hard_swish_s8_params *p, int32_t n, const int8_t *in,
                           int8_t *out);
dq_status dq_leaky_relu_s8(const dq_leaky_relu_s8_params *p, int32_t n, const int8_t *in,
                           int8_t *out);

/* Data movement, shared by both modes (int8 storage). */
dq_status dq_concat(int32_t axis, int32_t n_inputs, const dq_dims *in_dims,
                    const int8_t *const *in, const dq_dims *out_dims, int8_t *out);
dq_status dq_transpose(const int32_t *perm, const dq_dims *in_dims, const int8_t *in,
                       int8_t *out);
dq_status dq_pad(const int32_t *pads, int8_t value, const dq_dims *in_dims, const int8_t *in,
                 const dq_dims *out_dims, int8_t *out);
dq_status dq_clamp_s8(int32_t lo, int32_t hi, int32_t n, const int8_t *in, int8_t *out);
dq_status dq_transpose_conv_s8(const dq_window *w, const dq_requant_s8 *q,
                               const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                               const int32_t *bias, const dq_dims *out_dims, int8_t *out);
dq_status dq_transpose_conv_fx(const dq_window *w, const dq_requant_fx *q,
                               const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                               const int32_t *bias, const dq_dims *out_dims, int8_t *out);
dq_status dq_resize_nearest(const dq_dims *in_dims, const int8_t *in, const dq_dims *out_dims,
                            int8_t *out);
dq_status dq_slice(int32_t axis, int32_t begin, const dq_dims *in_dims, const int8_t *in,
                   const dq_dims *out_dims, int8_t *out);

/* Internal: running one op of a validated model (dq_invoke.c), for the profiler, and
 * the scratch bytes an op's kernel asks for, for the arena planner (dq_model.c). */
dq_status dq_run_op(const dq_model *m, uint32_t op, uint8_t *arena, int first_sample);
void dq_set_input(const dq_model *m, uint8_t *arena, const int8_t *input);
uint32_t dq_op_scratch_request(const dq_model *m, const dq_op *op);

/* Internal: validation of one op (dq_validate.c), called by dq_model_init. */
dq_status dq_check_op(const dq_model *m, const dq_op *op);

#endif
