/* Validation of each op at load time: operand shapes, constant sizes and parameter
 * ranges. The bounds also keep every int32 accumulation free of overflow. */
#include "dq_ops.h"

#define CHECK(cond, status) do { if (!(cond)) return (status); } while (0)
#define IN_RANGE(v, lo, hi) ((v) >= (lo) && (v) <= (hi))

static dq_status check_data(const dq_model *m, const dq_op *op, int k, int64_t count,
                            uint32_t size) {
    CHECK(op->data_count[k] == count, DQ_ERR_DATA);
    CHECK(op->data_offset[k] % 4 == 0, DQ_ERR_DATA);
    CHECK((uint64_t)op->data_offset[k] + (uint64_t)count * size <= m->header.data_bytes,
          DQ_ERR_DATA);
    return DQ_OK;
}

static const int32_t *data_i32(const dq_model *m, const dq_op *op, int k) {
    return (const int32_t *)(m->data + op->data_offset[k]);
}

static int is_s8(const dq_model *m) { return m->header.mode == DQ_MODE_S8; }

static dq_status check_range(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    const int32_t lo = is_s8(m) ? -128 : -(1 << (m->tensors[op->output].bits - 1));
    const int32_t hi = is_s8(m) ? 127 : (1 << (m->tensors[op->output].bits - 1)) - 1;
    CHECK(IN_RANGE(p[8], lo, hi) && IN_RANGE(p[9], p[8], hi), DQ_ERR_PARAM);
    return DQ_OK;
}

static dq_status check_requant(const dq_model *m, const dq_op *op, int32_t channels) {
    const int32_t *p = op->params;
    dq_status s;
    if ((s = check_range(m, op)) != DQ_OK) return s;
    if ((s = check_data(m, op, 1, channels, 4)) != DQ_OK) return s;
    if ((s = check_data(m, op, 3, channels, 4)) != DQ_OK) return s;
    const int32_t *bias = data_i32(m, op, 1), *shift = data_i32(m, op, 3);
    for (int32_t c = 0; c < channels; ++c)
        CHECK(IN_RANGE(bias[c], -(1 << 30), 1 << 30), DQ_ERR_PARAM);
    if (is_s8(m)) {
        CHECK(IN_RANGE(p[7], DQ_ROUND_DOUBLE, DQ_ROUND_SINGLE), DQ_ERR_PARAM);
        if ((s = check_data(m, op, 2, channels, 4)) != DQ_OK) return s;
        const int32_t *mult = data_i32(m, op, 2);
        for (int32_t c = 0; c < channels; ++c)
            CHECK(mult[c] >= 0 && IN_RANGE(shift[c], -31, 30), DQ_ERR_PARAM);
        return DQ_OK;
    }
    CHECK(IN_RANGE(p[7], DQ_FX_TRN, DQ_FX_RND_CONV), DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[12], 8, 32) && IN_RANGE(p[13], 0, 1) && IN_RANGE(p[14], 0, 1),
          DQ_ERR_PARAM);
    for (int32_t c = 0; c < channels; ++c) CHECK(IN_RANGE(shift[c], -24, 48), DQ_ERR_PARAM);
    return DQ_OK;
}

static dq_status check_window(const int32_t *p, int dilated) {
    CHECK(IN_RANGE(p[0], 1, 64) && IN_RANGE(p[1], 1, 64), DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[2], 0, 64) && IN_RANGE(p[3], 0, 64), DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[10], 1, 64) && IN_RANGE(p[11], 1, 64), DQ_ERR_PARAM);
    if (dilated) CHECK(IN_RANGE(p[4], 1, 64) && IN_RANGE(p[5], 1, 64), DQ_ERR_PARAM);
    return DQ_OK;
}

static dq_status check_conv(const dq_model *m, const dq_op *op, int depthwise) {
    const int32_t *p = op->params;
    const dq_tensor *in = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    const int32_t g = p[6], oc = out->dims[2], ic = in->dims[2];
    dq_status s;
    CHECK(op->n_inputs == 1, DQ_ERR_OP);
    if ((s = check_window(p, 1)) != DQ_OK) return s;
    CHECK(IN_RANGE(g, 1, 4096), DQ_ERR_PARAM);
    int64_t taps = (int64_t)p[10] * p[11];
    if (depthwise) {
        CHECK(oc == ic * g, DQ_ERR_SHAPE);
        if ((s = check_data(m, op, 0, taps * oc, 1)) != DQ_OK) return s;
    } else {
        CHECK(ic % g == 0 && oc % g == 0, DQ_ERR_SHAPE);
        taps *= ic / g;
        if ((s = check_data(m, op, 0, taps * oc, 1)) != DQ_OK) return s;
    }
    CHECK(taps <= 32768, DQ_ERR_SHAPE);     /* |sum| < 32768 * 255 * 128 < 2^30 */
    return check_requant(m, op, oc);
}

/* groups 1, no dilation; the same tap bound as a conv (each output sums at most
 * kh * kw * C_in products) */
static dq_status check_transpose_conv(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    CHECK(p[4] == 1 && p[5] == 1 && p[6] == 1, DQ_ERR_PARAM);
    return check_conv(m, op, 0);
}

static dq_status check_fc(const dq_model *m, const dq_op *op) {
    const dq_tensor *in = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    const int64_t n_in = dq_tensor_elems(in), n_out = out->dims[2];
    dq_status s;
    CHECK(op->n_inputs == 1, DQ_ERR_OP);
    CHECK(out->dims[0] == 1 && out->dims[1] == 1 && n_in <= 32768, DQ_ERR_SHAPE);
    if ((s = check_data(m, op, 0, n_in * n_out, 1)) != DQ_OK) return s;
    return check_requant(m, op, (int32_t)n_out);
}

static int same_dims(const dq_tensor *a, const dq_tensor *b) {
    return a->dims[0] == b->dims[0] && a->dims[1] == b->dims[1] && a->dims[2] == b->dims[2];
}

static int same_quant(const dq_tensor *a, const dq_tensor *b) {
    return a->zero_point == b->zero_point && a->bits == b->bits && a->frac_bits == b->frac_bits;
}

static dq_status check_add(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    const dq_tensor *a = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    CHECK(op->n_inputs == 2, DQ_ERR_OP);
    const dq_tensor *b = &m->tensors[op->inputs[1]];
    CHECK(same_dims(a, out) && same_dims(b, out), DQ_ERR_SHAPE);
    dq_status s = check_range(m, op);
    if (s != DQ_OK) return s;
    if (is_s8(m)) {
        CHECK(IN_RANGE(p[0], 0, 20) && IN_RANGE(p[7], 0, 1), DQ_ERR_PARAM);
        CHECK(p[1] >= 0 && p[3] >= 0 && p[5] >= 0, DQ_ERR_PARAM);
        CHECK(IN_RANGE(p[2], -31, 0) && IN_RANGE(p[4], -31, 0), DQ_ERR_PARAM);
        CHECK(IN_RANGE(p[6], -31, 30), DQ_ERR_PARAM);
        return DQ_OK;
    }
    CHECK(IN_RANGE(p[7], 0, 2) && IN_RANGE(p[12], 8, 32), DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[13], 0, 1) && IN_RANGE(p[14], 0, 1), DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[0] - a->frac_bits, 0, 16) && IN_RANGE(p[0] - b->frac_bits, 0, 16),
          DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[0] - out->frac_bits, -24, 48), DQ_ERR_PARAM);
    return DQ_OK;
}

static int broadcasts_to(const int32_t *dims, const dq_tensor *out) {
    for (int a = 0; a < 3; ++a)
        if (dims[a] != out->dims[a] && dims[a] != 1) return 0;
    return 1;
}

/* MUL (S8) by the constant in data 0: dims in params 4-6, zero point in param 3 */
static dq_status check_mul_const(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    CHECK(is_s8(m) && IN_RANGE(p[3], -128, 127), DQ_ERR_PARAM);
    for (int a = 4; a < 7; ++a) CHECK(IN_RANGE(p[a], 1, 4096), DQ_ERR_SHAPE);
    CHECK(broadcasts_to(p + 4, &m->tensors[op->output]), DQ_ERR_SHAPE);
    return check_data(m, op, 0, (int64_t)p[4] * p[5] * p[6], 1);
}

/* MUL: |(in1 + off1) * (in2 + off2)| <= 255 * 255, no int32 overflow; FX: the product
 * is at most 2^14 and the shift frac1 + frac2 - frac_out in the requantizer's range. */
static dq_status check_mul(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    CHECK(op->n_inputs == 1 || op->n_inputs == 2, DQ_ERR_OP);
    const dq_tensor *a = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    dq_status s = check_range(m, op);
    if (s != DQ_OK) return s;
    CHECK(broadcasts_to(a->dims, out), DQ_ERR_SHAPE);
    if (op->n_inputs == 1 && (s = check_mul_const(m, op)) != DQ_OK) return s;
    const dq_tensor *b = op->n_inputs == 2 ? &m->tensors[op->inputs[1]] : a;
    CHECK(broadcasts_to(b->dims, out), DQ_ERR_SHAPE);
    if (is_s8(m)) {
        CHECK(p[1] >= 0 && IN_RANGE(p[2], -31, 30) && IN_RANGE(p[7], 0, 1), DQ_ERR_PARAM);
        return DQ_OK;
    }
    CHECK(IN_RANGE(p[7], 0, 2) && IN_RANGE(p[12], 8, 32), DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[13], 0, 1) && IN_RANGE(p[14], 0, 1), DQ_ERR_PARAM);
    CHECK(IN_RANGE(a->frac_bits + b->frac_bits - out->frac_bits, -24, 48), DQ_ERR_PARAM);
    return DQ_OK;
}

/* AVG_POOL and MEAN, FX: dq_mean_fx_params and the change of fractional bits */
static dq_status check_mean_fx(const int32_t *p, const dq_tensor *in, const dq_tensor *out) {
    CHECK(IN_RANGE(p[7], 0, 2) && IN_RANGE(p[14], 0, 1), DQ_ERR_PARAM);
    CHECK(IN_RANGE(p[17], 0, 1) && IN_RANGE(p[18], 0, 8) && IN_RANGE(p[19], 0, 1),
          DQ_ERR_PARAM);
    if (p[17]) CHECK(IN_RANGE(p[12], 8, 32) && IN_RANGE(p[13], 0, 1), DQ_ERR_PARAM);
    else CHECK(IN_RANGE(p[15], 0, 1 << 16) && IN_RANGE(p[16], 0, 24), DQ_ERR_PARAM);
    CHECK(IN_RANGE(in->frac_bits - out->frac_bits, -8, 8), DQ_ERR_PARAM);
    return DQ_OK;
}

static dq_status check_pool(const dq_model *m, const dq_op *op) {
    const dq_tensor *in = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    CHECK(op->n_inputs == 1, DQ_ERR_OP);
    CHECK(in->dims[2] == out->dims[2], DQ_ERR_SHAPE);
    dq_status s = check_window(op->params, 0);
    if (s != DQ_OK) return s;
    if (!is_s8(m) && op->type == DQ_OP_AVG_POOL) {
        s = check_mean_fx(op->params, in, out);
        return s != DQ_OK ? s : check_range(m, op);
    }
    CHECK(same_quant(in, out), DQ_ERR_PARAM);
    return check_range(m, op);
}

static dq_status check_mean(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    const dq_tensor *in = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    CHECK(op->n_inputs == 1, DQ_ERR_OP);
    CHECK(out->dims[0] == 1 && out->dims[1] == 1 && out->dims[2] == in->dims[2], DQ_ERR_SHAPE);
    CHECK((int64_t)in->dims[0] * in->dims[1] <= 65536, DQ_ERR_SHAPE);
    if (is_s8(m)) {
        CHECK(p[1] >= 0 && IN_RANGE(p[2], -31, 30) && IN_RANGE(p[7], 0, 1), DQ_ERR_PARAM);
        return DQ_OK;
    }
    const dq_status s = check_mean_fx(p, in, out);
    return s != DQ_OK ? s : check_range(m, op);   /* the kernel clamps to params 8, 9 */
}

static dq_status check_concat(const dq_model *m, const dq_op *op) {
    const dq_tensor *out = &m->tensors[op->output];
    const int32_t axis = op->params[0];
    CHECK(IN_RANGE(axis, 0, 2), DQ_ERR_PARAM);
    int64_t total = 0;
    for (uint32_t k = 0; k < op->n_inputs; ++k) {
        const dq_tensor *in = &m->tensors[op->inputs[k]];
        CHECK(same_quant(in, out), DQ_ERR_PARAM);
        for (int a = 0; a < 3; ++a)
            CHECK(a == axis || in->dims[a] == out->dims[a], DQ_ERR_SHAPE);
        total += in->dims[axis];
    }
    CHECK(total == out->dims[axis], DQ_ERR_SHAPE);
    return DQ_OK;
}

static dq_status check_move(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    const dq_tensor *in = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    CHECK(op->n_inputs == 1 && same_quant(in, out), DQ_ERR_OP);
    if (op->type == DQ_OP_RESHAPE) {
        CHECK(dq_tensor_elems(in) == dq_tensor_elems(out), DQ_ERR_SHAPE);
    } else if (op->type == DQ_OP_TRANSPOSE) {
        CHECK(IN_RANGE(p[0], 0, 2) && IN_RANGE(p[1], 0, 2) && IN_RANGE(p[2], 0, 2), DQ_ERR_PARAM);
        CHECK(p[0] != p[1] && p[1] != p[2] && p[0] != p[2], DQ_ERR_PARAM);
        for (int a = 0; a < 3; ++a) CHECK(out->dims[a] == in->dims[p[a]], DQ_ERR_SHAPE);
    } else if (op->type == DQ_OP_PAD) {
        CHECK(IN_RANGE(p[6], 0, 2), DQ_ERR_PARAM);
        for (int a = 0; a < 3; ++a) {
            const int32_t limit = p[6] == 0 ? 1024 : in->dims[a] - (p[6] == 1);
            CHECK(IN_RANGE(p[2 * a], 0, limit) && IN_RANGE(p[2 * a + 1], 0, limit), DQ_ERR_PARAM);
            CHECK(out->dims[a] == in->dims[a] + p[2 * a] + p[2 * a + 1], DQ_ERR_SHAPE);
        }
    } else if (op->type == DQ_OP_RESIZE_NEAREST) {
        CHECK(in->dims[2] == out->dims[2] && out->dims[0] <= 4096 && out->dims[1] <= 4096,
              DQ_ERR_SHAPE);
        CHECK(out->dims[0] % in->dims[0] == 0 && out->dims[1] % in->dims[1] == 0, DQ_ERR_SHAPE);
    } else if (op->type == DQ_OP_CLAMP) {
        CHECK(same_dims(in, out), DQ_ERR_SHAPE);
        return check_range(m, op);
    } else {                                   /* DQ_OP_SLICE */
        CHECK(IN_RANGE(p[0], 0, 2), DQ_ERR_PARAM);
        for (int a = 0; a < 3; ++a)
            CHECK(a == p[0] || in->dims[a] == out->dims[a], DQ_ERR_SHAPE);
        CHECK(IN_RANGE(p[1], 0, in->dims[p[0]] - out->dims[p[0]]), DQ_ERR_PARAM);
    }
    return DQ_OK;
}

/* A table of 256 codes, each within the output's bits. */
static dq_status check_table(const dq_model *m, const dq_op *op) {
    dq_status s;
    if ((s = check_data(m, op, 0, 256, 1)) != DQ_OK) return s;
    const int8_t *table = (const int8_t *)(m->data + op->data_offset[0]);
    const int32_t bits = m->tensors[op->output].bits;
    for (int k = 0; k < 256; ++k)
        CHECK(IN_RANGE(table[k], -(1 << (bits - 1)), (1 << (bits - 1)) - 1), DQ_ERR_PARAM);
    return DQ_OK;
}

static dq_status check_activation(const dq_model *m, const dq_op *op) {
    const int32_t *p = op->params;
    const dq_tensor *in = &m->tensors[op->inputs[0]], *out = &m->tensors[op->output];
    CHECK(op->n_inputs == 1, DQ_ERR_OP);
    CHECK(same_dims(in, out), DQ_ERR_SHAPE);
    if (!is_s8(m) || op->type == DQ_OP_LOGISTIC || op->type == DQ_OP_TANH)
        return check_table(m, op);
    if (op->type == DQ_OP_HARD_SWISH) {      /* TFLite's Prepare ensures these */
        CHECK(IN_RANGE(p[0], 0, INT16_MAX) && IN_RANGE(p[1], -15, 0), DQ_ERR_PARAM);
        CHECK(IN_RANGE(p[2], 0, INT16_MAX) && IN_RANGE(p[3], -15, 30), DQ_ERR_PARAM);
        return DQ_OK;
    }
    CHECK(IN_RANGE(p[7], DQ_ROUND_DOUBLE, DQ_ROUND_SINGLE), DQ_ERR_PARAM);
    CHECK(p[1] >= 0 && IN_RANGE(p[2], -31, 30) && p[3] >= 0 && IN_RANGE(p[4], -31, 30),
          DQ_ERR_PARAM);
    return check_range(m, op);
}

dq_status dq_check_op(const dq_model *m, const dq_op *op) {
    switch (op->type) {
    case DQ_OP_CONV2D: return check_conv(m, op, 0);
    case DQ_OP_DEPTHWISE_CONV2D: return check_conv(m, op, 1);
    case DQ_OP_TRANSPOSE_CONV: return check_transpose_conv(m, op);
    case DQ_OP_FULLY_CONNECTED: return check_fc(m, op);
    case DQ_OP_ADD: return check_add(m, op);
    case DQ_OP_MUL: return check_mul(m, op);
    case DQ_OP_MAX_POOL: case DQ_OP_AVG_POOL: return check_pool(m, op);
    case DQ_OP_MEAN: return check_mean(m, op);
    case DQ_OP_CONCAT: return check_concat(m, op);
    case DQ_OP_RESHAPE: case DQ_OP_TRANSPOSE: case DQ_OP_PAD: case DQ_OP_CLAMP:
    case DQ_OP_SLICE: case DQ_OP_RESIZE_NEAREST: return check_move(m, op);
    case DQ_OP_LOGISTIC: case DQ_OP_TANH: case DQ_OP_HARD_SWISH: case DQ_OP_LEAKY_RELU:
        return check_activation(m, op);
    default: return DQ_ERR_OP;
    }
}
