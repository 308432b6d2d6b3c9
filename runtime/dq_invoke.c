/* Running a validated model: one dispatch table from op type to a small function
 * that unpacks the op's record and calls its kernel through the kernel table
 * (dq_kernels.h). No checks here (dq_model_init made them); no allocation (tensors
 * and kernel scratch live in the caller's arena). */
#include <string.h>

#include "dq_kernels.h"

typedef dq_status (*dq_run_fn)(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                               uint8_t *arena);

static int8_t *tensor(const dq_model *m, uint8_t *arena, uint32_t t) {
    return (int8_t *)(arena + m->tensor_offset[t]);
}

static const void *data(const dq_model *m, const dq_op *op, int k) {
    return m->data + op->data_offset[k];
}

static dq_window window_of(const int32_t *p) {
    dq_window w = {p[DQ_P_STRIDE_H], p[DQ_P_STRIDE_W], p[DQ_P_PAD_TOP], p[DQ_P_PAD_LEFT],
                   p[DQ_P_DILATION_H], p[DQ_P_DILATION_W], p[DQ_P_KERNEL_H],
                   p[DQ_P_KERNEL_W], p[DQ_P_GROUPS]};
    return w;
}

static dq_requant_s8 requant_s8(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    dq_requant_s8 q = {(const int32_t *)data(m, op, 2), (const int32_t *)data(m, op, 3),
                       -m->tensors[op->inputs[0]].zero_point,
                       m->tensors[op->output].zero_point, p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX],
                       (dq_rounding)p[DQ_P_ROUNDING]};
    return q;
}

/* shift: per-channel shifts (the op's data 3), or NULL for a single shift set later */
static dq_requant_fx requant_fx(const dq_model *m, const dq_op *op, const int32_t *shift) {
    const int32_t *p = op->params;
    dq_requant_fx q = {shift, p[DQ_P_ACC_BITS], m->tensors[op->output].bits,
                       p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX], (dq_fx_quant)p[DQ_P_ROUNDING],
                       (dq_fx_overflow)p[DQ_P_ACC_OVERFLOW], (dq_fx_overflow)p[DQ_P_OUT_OVERFLOW]};
    return q;
}

static int is_s8(const dq_model *m) { return m->header.mode == DQ_MODE_S8; }

/* frac_in (+ guard_bits when dividing) - frac_out */
static int32_t mean_fx_shift(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    return m->tensors[op->inputs[0]].frac_bits - m->tensors[op->output].frac_bits +
           (p[DQ_P_POOL_DIVISION] ? p[DQ_P_GUARD_BITS] : 0);
}

static dq_mean_fx_params mean_fx_params(const int32_t *p) {
    const dq_mean_fx_params mp = {p[DQ_P_RECIPROCAL], p[DQ_P_RECIPROCAL_BITS],
                                  p[DQ_P_POOL_DIVISION], p[DQ_P_GUARD_BITS],
                                  p[DQ_P_EXCLUDE_PAD]};
    return mp;
}

/* fully connected as a window op for the scratch queries: 1 x 1 x n_in -> 1 x 1 x n_out */
static dq_dims vector_dims(const dq_model *m, uint32_t t) {
    dq_dims d = {1, 1, (int32_t)dq_tensor_elems(&m->tensors[t])};
    return d;
}

#define IN_DIMS dq_dims_of(&m->tensors[op->inputs[0]])
#define OUT_DIMS dq_dims_of(&m->tensors[op->output])
#define IN0 tensor(m, arena, op->inputs[0])
#define IN1 tensor(m, arena, op->inputs[1])
#define OUT tensor(m, arena, op->output)

static dq_status run_conv(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                          uint8_t *arena) {
    const dq_window w = window_of(op->params);
    const dq_dims in = IN_DIMS, out = OUT_DIMS;
    const int8_t *f = data(m, op, 0);
    const int32_t *b = data(m, op, 1);
    const int dw = op->type == DQ_OP_DEPTHWISE_CONV2D;
    if (is_s8(m)) {
        const dq_requant_s8 q = requant_s8(m, op);
        return (dw ? dq_kernels.depthwise_conv2d_s8 : dq_kernels.conv2d_s8)(
            ctx, &w, &q, &in, IN0, f, b, &out, OUT);
    }
    const dq_requant_fx q = requant_fx(m, op, data(m, op, 3));
    return (dw ? dq_kernels.depthwise_conv2d_fx : dq_kernels.conv2d_fx)(
        ctx, &w, &q, &in, IN0, f, b, &out, OUT);
}

static dq_status run_transpose_conv(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                                    uint8_t *arena) {
    (void)ctx;
    const dq_window w = window_of(op->params);
    const dq_dims in = IN_DIMS, out = OUT_DIMS;
    const int8_t *f = data(m, op, 0);
    const int32_t *b = data(m, op, 1);
    if (is_s8(m)) {
        const dq_requant_s8 q = requant_s8(m, op);
        return dq_transpose_conv_s8(&w, &q, &in, IN0, f, b, &out, OUT);
    }
    const dq_requant_fx q = requant_fx(m, op, data(m, op, 3));
    return dq_transpose_conv_fx(&w, &q, &in, IN0, f, b, &out, OUT);
}

static dq_status run_fc(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                        uint8_t *arena) {
    const int32_t n_in = (int32_t)dq_tensor_elems(&m->tensors[op->inputs[0]]);
    const int32_t n_out = m->tensors[op->output].dims[2];
    if (is_s8(m)) {
        const dq_requant_s8 q = requant_s8(m, op);
        return dq_kernels.fully_connected_s8(ctx, &q, n_in, IN0, data(m, op, 0),
                                             data(m, op, 1), n_out, OUT);
    }
    const dq_requant_fx q = requant_fx(m, op, data(m, op, 3));
    return dq_kernels.fully_connected_fx(ctx, &q, n_in, IN0, data(m, op, 0), data(m, op, 1),
                                         n_out, OUT);
}

static dq_add_s8_params add_s8_params(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    dq_add_s8_params a = {
        .left_shift = p[DQ_P_LEFT_SHIFT],
        .in1_offset = -m->tensors[op->inputs[0]].zero_point,
        .in1_multiplier = p[DQ_P_IN1_MULTIPLIER], .in1_shift = p[DQ_P_IN1_SHIFT],
        .in2_offset = -m->tensors[op->inputs[1]].zero_point,
        .in2_multiplier = p[DQ_P_IN2_MULTIPLIER], .in2_shift = p[DQ_P_IN2_SHIFT],
        .out_offset = m->tensors[op->output].zero_point,
        .out_multiplier = p[DQ_P_OUT_MULTIPLIER], .out_shift = p[DQ_P_OUT_SHIFT],
        .act_min = p[DQ_P_ACT_MIN], .act_max = p[DQ_P_ACT_MAX],
        .rounding = (dq_rounding)p[DQ_P_ROUNDING]};
    return a;
}

static dq_status run_add(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                         uint8_t *arena) {
    (void)ctx;
    const dq_tensor *a = &m->tensors[op->inputs[0]], *b = &m->tensors[op->inputs[1]];
    const int32_t n = (int32_t)dq_tensor_elems(a);
    if (is_s8(m)) {
        const dq_add_s8_params p = add_s8_params(m, op);
        return dq_kernels.add_s8(&p, n, IN0, IN1, OUT);
    }
    const int32_t common = op->params[DQ_P_COMMON_FRAC_BITS];
    const int32_t shift[1] = {common - m->tensors[op->output].frac_bits};
    const dq_requant_fx q = requant_fx(m, op, shift);
    return dq_kernels.add_fx(&q, common - a->frac_bits, IN0, common - b->frac_bits, IN1, n,
                             OUT);
}

static dq_status run_mul(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                         uint8_t *arena) {
    (void)ctx;
    const int32_t *p = op->params;
    const dq_tensor *a = &m->tensors[op->inputs[0]];
    if (op->n_inputs == 1) {                  /* S8 times the constant in data 0 */
        const dq_dims d1 = dq_dims_of(a), out = OUT_DIMS;
        const dq_dims d2 = {p[DQ_P_CONST_H], p[DQ_P_CONST_W], p[DQ_P_CONST_C]};
        const dq_mul_s8_params mp = {-a->zero_point, -p[DQ_P_CONST_ZERO_POINT],
                                     m->tensors[op->output].zero_point, p[DQ_P_MULTIPLIER],
                                     p[DQ_P_SHIFT], p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX],
                                     (dq_rounding)p[DQ_P_ROUNDING]};
        return dq_kernels.mul_s8(&mp, &d1, IN0, &d2, data(m, op, 0), &out, OUT);
    }
    const dq_tensor *b = &m->tensors[op->inputs[1]];
    const dq_dims d1 = dq_dims_of(a), d2 = dq_dims_of(b), out = OUT_DIMS;
    if (is_s8(m)) {
        const dq_mul_s8_params mp = {-a->zero_point, -b->zero_point,
                                     m->tensors[op->output].zero_point, p[DQ_P_MULTIPLIER],
                                     p[DQ_P_SHIFT], p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX],
                                     (dq_rounding)p[DQ_P_ROUNDING]};
        return dq_kernels.mul_s8(&mp, &d1, IN0, &d2, IN1, &out, OUT);
    }
    const int32_t shift[1] = {a->frac_bits + b->frac_bits - m->tensors[op->output].frac_bits};
    const dq_requant_fx q = requant_fx(m, op, shift);
    return dq_kernels.mul_fx(&q, &d1, IN0, &d2, IN1, &out, OUT);
}

static dq_status run_pool(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                          uint8_t *arena) {
    (void)ctx;
    const dq_window w = window_of(op->params);
    const dq_dims in = IN_DIMS, out = OUT_DIMS;
    const int32_t *p = op->params;
    if (op->type == DQ_OP_MAX_POOL)
        return dq_kernels.max_pool_s8(&w, p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX], &in, IN0, &out, OUT);
    if (is_s8(m))
        return dq_kernels.avg_pool_s8(&w, p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX], &in, IN0, &out, OUT);
    const int32_t shift[1] = {mean_fx_shift(m, op)};
    const dq_requant_fx q = requant_fx(m, op, shift);
    const dq_mean_fx_params mp = mean_fx_params(p);
    return dq_kernels.avg_pool_fx(&w, &q, &mp, &in, IN0, &out, OUT);
}

static dq_status run_mean(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                          uint8_t *arena) {
    (void)ctx;
    const dq_dims in = IN_DIMS;
    const int32_t *p = op->params;
    if (is_s8(m)) {
        const dq_mean_s8_params mp = {-m->tensors[op->inputs[0]].zero_point,
                                      m->tensors[op->output].zero_point, p[DQ_P_MULTIPLIER],
                                      p[DQ_P_SHIFT], (dq_rounding)p[DQ_P_ROUNDING]};
        return dq_kernels.mean_s8(&mp, &in, IN0, OUT);
    }
    const int32_t shift[1] = {mean_fx_shift(m, op)};
    const dq_requant_fx q = requant_fx(m, op, shift);
    const dq_mean_fx_params mp = mean_fx_params(p);
    return dq_kernels.mean_fx(&q, &mp, &in, IN0, OUT);
}

static dq_status run_concat(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                            uint8_t *arena) {
    (void)ctx;
    dq_dims dims[DQ_MAX_INPUTS];
    const int8_t *ins[DQ_MAX_INPUTS];
    for (uint32_t k = 0; k < op->n_inputs; ++k) {
        dims[k] = dq_dims_of(&m->tensors[op->inputs[k]]);
        ins[k] = tensor(m, arena, op->inputs[k]);
    }
    const dq_dims out = OUT_DIMS;
    return dq_concat(op->params[DQ_P_AXIS], (int32_t)op->n_inputs, dims, ins, &out, OUT);
}

static dq_status run_move(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                          uint8_t *arena) {
    (void)ctx;
    const dq_dims in = IN_DIMS, out = OUT_DIMS;
    const int32_t *p = op->params;
    const int32_t n = (int32_t)dq_tensor_elems(&m->tensors[op->output]);
    switch (op->type) {
    case DQ_OP_RESHAPE: memmove(OUT, IN0, (size_t)n); return DQ_OK;
    case DQ_OP_TRANSPOSE: return dq_transpose(p + DQ_P_PERM_0, &in, IN0, OUT);
    case DQ_OP_CLAMP: return dq_clamp_s8(p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX], n, IN0, OUT);
    case DQ_OP_SLICE: return dq_slice(p[DQ_P_AXIS], p[DQ_P_BEGIN], &in, IN0, &out, OUT);
    case DQ_OP_RESIZE_NEAREST:
        return dq_resize_nearest(&in, IN0, &out, OUT);
    default:                                   /* DQ_OP_PAD */
        return dq_pad(p + DQ_P_BEFORE_H, (int8_t)m->tensors[op->inputs[0]].zero_point, &in,
                      IN0, &out, OUT);
    }
}

/* LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU: a table in FX mode and for LOGISTIC and TANH
 * in S8 mode; TFLite's integer algorithms for the other two in S8 mode. */
static dq_status run_activation(const dq_model *m, const dq_op *op, const dq_ctx *ctx,
                                uint8_t *arena) {
    const int32_t *p = op->params;
    const int32_t n = (int32_t)dq_tensor_elems(&m->tensors[op->output]);
    const int32_t zp_in = m->tensors[op->inputs[0]].zero_point;
    const int32_t zp_out = m->tensors[op->output].zero_point;
    if (!is_s8(m) || op->type == DQ_OP_LOGISTIC || op->type == DQ_OP_TANH)
        return dq_kernels.lut_s8((const int8_t *)data(m, op, 0), n, IN0, OUT);
    if (op->type == DQ_OP_HARD_SWISH) {
        const dq_hard_swish_s8_params hp = {
            zp_in, zp_out, (int16_t)p[DQ_P_OUTPUT_MULTIPLIER_INT16],
            (int16_t)p[DQ_P_RELUISH_MULTIPLIER_INT16], p[DQ_P_OUTPUT_EXPONENT],
            p[DQ_P_RELUISH_EXPONENT]};
        return dq_kernels.hard_swish_s8(ctx, &hp, n, IN0, OUT);
    }
    const dq_leaky_relu_s8_params lp = {
        -zp_in, zp_out, p[DQ_P_IDENTITY_MULTIPLIER], p[DQ_P_IDENTITY_SHIFT],
        p[DQ_P_ALPHA_MULTIPLIER], p[DQ_P_ALPHA_SHIFT], p[DQ_P_ACT_MIN], p[DQ_P_ACT_MAX],
        (dq_rounding)p[DQ_P_ROUNDING]};
    return dq_kernels.leaky_relu_s8(ctx, &lp, n, IN0, OUT);
}

static const dq_run_fn RUN[DQ_OP_COUNT] = {
    [DQ_OP_CONV2D] = run_conv, [DQ_OP_DEPTHWISE_CONV2D] = run_conv,
    [DQ_OP_FULLY_CONNECTED] = run_fc, [DQ_OP_ADD] = run_add, [DQ_OP_MAX_POOL] = run_pool,
    [DQ_OP_AVG_POOL] = run_pool, [DQ_OP_MEAN] = run_mean, [DQ_OP_CONCAT] = run_concat,
    [DQ_OP_RESHAPE] = run_move, [DQ_OP_TRANSPOSE] = run_move, [DQ_OP_PAD] = run_move,
    [DQ_OP_CLAMP] = run_move, [DQ_OP_SLICE] = run_move, [DQ_OP_MUL] = run_mul,
    [DQ_OP_LOGISTIC] = run_activation, [DQ_OP_TANH] = run_activation,
    [DQ_OP_HARD_SWISH] = run_activation, [DQ_OP_LEAKY_RELU] = run_activation,
    [DQ_OP_RESIZE_NEAREST] = run_move, [DQ_OP_TRANSPOSE_CONV] = run_transpose_conv,
};

/* The scratch query of the op's kernel in this build's set (0 when it has none). */
uint32_t dq_op_scratch_request(const dq_model *m, const dq_op *op) {
    dq_scratch_fn fn = NULL;
    const int s8 = is_s8(m);
    if (op->type == DQ_OP_CONV2D)
        fn = s8 ? dq_kernels.conv2d_s8_scratch : dq_kernels.conv2d_fx_scratch;
    else if (op->type == DQ_OP_DEPTHWISE_CONV2D)
        fn = s8 ? dq_kernels.depthwise_conv2d_s8_scratch : dq_kernels.depthwise_conv2d_fx_scratch;
    else if (op->type == DQ_OP_FULLY_CONNECTED)
        fn = s8 ? dq_kernels.fully_connected_s8_scratch : dq_kernels.fully_connected_fx_scratch;
    else if (s8 && (op->type == DQ_OP_HARD_SWISH || op->type == DQ_OP_LEAKY_RELU))
        fn = dq_kernels.activation_s8_scratch;
    if (fn == NULL) return 0;
    const dq_window w = window_of(op->params);
    const int fc = op->type == DQ_OP_FULLY_CONNECTED;
    const dq_dims in = fc ? vector_dims(m, op->inputs[0]) : IN_DIMS;
    const dq_dims out = fc ? vector_dims(m, op->output) : OUT_DIMS;
    return (uint32_t)fn(fc ? NULL : &w, &in, &out);
}

dq_status dq_run_op(const dq_model *m, uint32_t i, uint8_t *arena, int first_sample) {
    const uint32_t bytes = dq_op_scratch_request(m, &m->ops[i]);
    const dq_ctx ctx = {bytes ? arena + m->scratch_offset[i] : NULL, (int32_t)bytes, first_sample};
    return RUN[m->ops[i].type](m, &m->ops[i], &ctx, arena);
}

void dq_set_input(const dq_model *m, uint8_t *arena, const int8_t *input) {
    memcpy(tensor(m, arena, m->header.input), input, m->tensor_bytes[m->header.input]);
}

static dq_status invoke_one(const dq_model *m, uint8_t *arena, const int8_t *input,
                            int first_sample) {
    dq_set_input(m, arena, input);
    for (uint32_t i = 0; i < m->header.n_ops; ++i) {
        const dq_status s = dq_run_op(m, i, arena, first_sample);
        if (s != DQ_OK) return s;
    }
    return DQ_OK;
}

dq_status dq_invoke(const dq_model *m, uint8_t *arena, const int8_t *input, int8_t *output,
                    int32_t n) {
    if (!m || !arena || !input || !output || n < 0) return DQ_ERR_ARG;
    const size_t in_bytes = m->tensor_bytes[m->header.input];
    const size_t out_bytes = m->tensor_bytes[m->header.output];
    for (int32_t i = 0; i < n; ++i) {
        const dq_status s = invoke_one(m, arena, input + i * in_bytes, i == 0);
        if (s != DQ_OK) return s;
        memcpy(output + i * out_bytes, tensor(m, arena, m->header.output), out_bytes);
    }
    return DQ_OK;
}

dq_status dq_invoke_dump(const dq_model *m, uint8_t *arena, const int8_t *input, int8_t *dump) {
    if (!m || !arena || !input || !dump) return DQ_ERR_ARG;
    dq_set_input(m, arena, input);
    size_t at[DQ_MAX_TENSORS], total = 0;
    for (uint32_t t = 0; t < m->header.n_tensors; ++t) { at[t] = total; total += m->tensor_bytes[t]; }
    memcpy(dump + at[m->header.input], input, m->tensor_bytes[m->header.input]);
    for (uint32_t i = 0; i < m->header.n_ops; ++i) {
        const dq_op *op = &m->ops[i];
        const dq_status s = dq_run_op(m, i, arena, 1);
        if (s != DQ_OK) return s;
        memcpy(dump + at[op->output], tensor(m, arena, op->output), m->tensor_bytes[op->output]);
    }
    return DQ_OK;
}
