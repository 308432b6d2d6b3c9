/* Running a validated model: one dispatch table from op type to a small function
 * that unpacks the op's record and calls its kernel. No checks here (dq_model_init
 * made them); no allocation (tensors live in the caller's arena). */
#include <string.h>

#include "dq_ops.h"

typedef dq_status (*dq_run_fn)(const dq_model *m, const dq_op *op, uint8_t *arena);

static int8_t *tensor(const dq_model *m, uint8_t *arena, uint32_t t) {
    return (int8_t *)(arena + m->tensor_offset[t]);
}

static const void *data(const dq_model *m, const dq_op *op, int k) {
    return m->data + op->data_offset[k];
}

static dq_window window_of(const int32_t *p) {
    dq_window w = {p[0], p[1], p[2], p[3], p[4], p[5], p[10], p[11], p[6]};
    return w;
}

static dq_requant_s8 requant_s8(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    dq_requant_s8 q = {(const int32_t *)data(m, op, 2), (const int32_t *)data(m, op, 3),
                       -m->tensors[op->inputs[0]].zero_point,
                       m->tensors[op->output].zero_point, p[8], p[9], (dq_rounding)p[7]};
    return q;
}

static dq_requant_fx requant_fx(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    dq_requant_fx q = {(const int32_t *)data(m, op, 3), p[12], m->tensors[op->output].bits,
                       p[8], p[9], (dq_fx_quant)p[7], (dq_fx_overflow)p[13],
                       (dq_fx_overflow)p[14]};
    return q;
}

#define IN_DIMS dq_dims_of(&m->tensors[op->inputs[0]])
#define OUT_DIMS dq_dims_of(&m->tensors[op->output])
#define IN0 tensor(m, arena, op->inputs[0])
#define OUT tensor(m, arena, op->output)

static dq_status run_conv(const dq_model *m, const dq_op *op, uint8_t *arena) {
    const dq_window w = window_of(op->params);
    const dq_dims in = IN_DIMS, out = OUT_DIMS;
    const int8_t *f = data(m, op, 0);
    const int32_t *b = data(m, op, 1);
    const int dw = op->type == DQ_OP_DEPTHWISE_CONV2D;
    if (m->header.mode == DQ_MODE_S8) {
        const dq_requant_s8 q = requant_s8(m, op);
        return dw ? dq_depthwise_conv2d_s8(&w, &q, &in, IN0, f, b, &out, OUT)
                  : dq_conv2d_s8(&w, &q, &in, IN0, f, b, &out, OUT);
    }
    const dq_requant_fx q = requant_fx(m, op);
    return dw ? dq_depthwise_conv2d_fx(&w, &q, &in, IN0, f, b, &out, OUT)
              : dq_conv2d_fx(&w, &q, &in, IN0, f, b, &out, OUT);
}

static dq_status run_fc(const dq_model *m, const dq_op *op, uint8_t *arena) {
    const int32_t n_in = (int32_t)dq_tensor_elems(&m->tensors[op->inputs[0]]);
    const int32_t n_out = m->tensors[op->output].dims[2];
    if (m->header.mode == DQ_MODE_S8) {
        const dq_requant_s8 q = requant_s8(m, op);
        return dq_fully_connected_s8(&q, n_in, IN0, data(m, op, 0), data(m, op, 1), n_out, OUT);
    }
    const dq_requant_fx q = requant_fx(m, op);
    return dq_fully_connected_fx(&q, n_in, IN0, data(m, op, 0), data(m, op, 1), n_out, OUT);
}

static dq_status run_add(const dq_model *m, const dq_op *op, uint8_t *arena) {
    const dq_tensor *a = &m->tensors[op->inputs[0]], *b = &m->tensors[op->inputs[1]];
    const int32_t n = (int32_t)dq_tensor_elems(a);
    if (m->header.mode == DQ_MODE_S8)
        return dq_add_s8(op->params, -a->zero_point, IN0, -b->zero_point,
                         tensor(m, arena, op->inputs[1]), m->tensors[op->output].zero_point,
                         n, OUT);
    const dq_requant_fx q = requant_fx(m, op);
    const int32_t common = op->params[0];
    const int32_t shift[1] = {common - m->tensors[op->output].frac_bits};
    dq_requant_fx qs = q;
    qs.shift = shift;
    return dq_add_fx(&qs, common - a->frac_bits, IN0, common - b->frac_bits,
                     tensor(m, arena, op->inputs[1]), n, OUT);
}

static dq_status run_pool(const dq_model *m, const dq_op *op, uint8_t *arena) {
    const dq_window w = window_of(op->params);
    const dq_dims in = IN_DIMS, out = OUT_DIMS;
    const int32_t *p = op->params;
    if (op->type == DQ_OP_MAX_POOL) return dq_max_pool_s8(&w, p[8], p[9], &in, IN0, &out, OUT);
    if (m->header.mode == DQ_MODE_S8) return dq_avg_pool_s8(&w, p[8], p[9], &in, IN0, &out, OUT);
    dq_requant_fx q = requant_fx(m, op);
    const int32_t shift[1] = {m->tensors[op->inputs[0]].frac_bits - m->tensors[op->output].frac_bits};
    q.shift = shift;
    return dq_avg_pool_fx(&w, &q, p[15], p[16], &in, IN0, &out, OUT);
}

static dq_status run_mean(const dq_model *m, const dq_op *op, uint8_t *arena) {
    const dq_dims in = IN_DIMS;
    if (m->header.mode == DQ_MODE_S8)
        return dq_mean_s8(op->params, -m->tensors[op->inputs[0]].zero_point,
                          m->tensors[op->output].zero_point, &in, IN0, OUT);
    dq_requant_fx q = requant_fx(m, op);
    const int32_t shift[1] = {m->tensors[op->inputs[0]].frac_bits - m->tensors[op->output].frac_bits};
    q.shift = shift;
    return dq_mean_fx(&q, op->params[15], op->params[16], &in, IN0, OUT);
}

static dq_status run_concat(const dq_model *m, const dq_op *op, uint8_t *arena) {
    dq_dims dims[DQ_MAX_INPUTS];
    const int8_t *ins[DQ_MAX_INPUTS];
    for (uint32_t k = 0; k < op->n_inputs; ++k) {
        dims[k] = dq_dims_of(&m->tensors[op->inputs[k]]);
        ins[k] = tensor(m, arena, op->inputs[k]);
    }
    const dq_dims out = OUT_DIMS;
    return dq_concat(op->params[0], (int32_t)op->n_inputs, dims, ins, &out, OUT);
}

static dq_status run_move(const dq_model *m, const dq_op *op, uint8_t *arena) {
    const dq_dims in = IN_DIMS, out = OUT_DIMS;
    if (op->type == DQ_OP_RESHAPE) {
        memmove(OUT, IN0, (size_t)dq_tensor_elems(&m->tensors[op->output]));
        return DQ_OK;
    }
    if (op->type == DQ_OP_TRANSPOSE) return dq_transpose(op->params, &in, IN0, OUT);
    if (op->type == DQ_OP_CLAMP)
        return dq_clamp_s8(op->params[8], op->params[9], (int32_t)dq_tensor_elems(&m->tensors[op->output]), IN0, OUT);
    if (op->type == DQ_OP_SLICE) return dq_slice(op->params[0], op->params[1], &in, IN0, &out, OUT);
    return dq_pad(op->params, (int8_t)m->tensors[op->inputs[0]].zero_point, &in, IN0, &out, OUT);
}

static const dq_run_fn RUN[DQ_OP_COUNT] = {
    [DQ_OP_CONV2D] = run_conv, [DQ_OP_DEPTHWISE_CONV2D] = run_conv,
    [DQ_OP_FULLY_CONNECTED] = run_fc, [DQ_OP_ADD] = run_add, [DQ_OP_MAX_POOL] = run_pool,
    [DQ_OP_AVG_POOL] = run_pool, [DQ_OP_MEAN] = run_mean, [DQ_OP_CONCAT] = run_concat,
    [DQ_OP_RESHAPE] = run_move, [DQ_OP_TRANSPOSE] = run_move, [DQ_OP_PAD] = run_move,
    [DQ_OP_CLAMP] = run_move, [DQ_OP_SLICE] = run_move,
};

dq_status dq_run_op(const dq_model *m, uint32_t i, uint8_t *arena) {
    return RUN[m->ops[i].type](m, &m->ops[i], arena);
}

void dq_set_input(const dq_model *m, uint8_t *arena, const int8_t *input) {
    memcpy(tensor(m, arena, m->header.input), input, m->tensor_bytes[m->header.input]);
}

static dq_status invoke_one(const dq_model *m, uint8_t *arena, const int8_t *input) {
    dq_set_input(m, arena, input);
    for (uint32_t i = 0; i < m->header.n_ops; ++i) {
        const dq_status s = dq_run_op(m, i, arena);
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
        const dq_status s = invoke_one(m, arena, input + i * in_bytes);
        if (s != DQ_OK) return s;
        memcpy(output + i * out_bytes, tensor(m, arena, m->header.output), out_bytes);
    }
    return DQ_OK;
}

dq_status dq_invoke_dump(const dq_model *m, uint8_t *arena, const int8_t *input, int8_t *dump) {
    if (!m || !arena || !input || !dump) return DQ_ERR_ARG;
    memcpy(tensor(m, arena, m->header.input), input, m->tensor_bytes[m->header.input]);
    size_t at[DQ_MAX_TENSORS], total = 0;
    for (uint32_t t = 0; t < m->header.n_tensors; ++t) { at[t] = total; total += m->tensor_bytes[t]; }
    memcpy(dump + at[m->header.input], input, m->tensor_bytes[m->header.input]);
    for (uint32_t i = 0; i < m->header.n_ops; ++i) {
        const dq_op *op = &m->ops[i];
        const dq_status s = RUN[op->type](m, op, arena);
        if (s != DQ_OK) return s;
        memcpy(dump + at[op->output], tensor(m, arena, op->output), m->tensor_bytes[op->output]);
    }
    return DQ_OK;
}
