/* Loading: every check happens here, once. After dq_model_init returns DQ_OK, every
 * index, offset, shape and parameter the kernels read is known to be in range. */
#include <string.h>

#include "dq_ops.h"

#define CHECK(cond, status) do { if (!(cond)) return (status); } while (0)

static dq_status check_tensor(const dq_tensor *t, uint32_t mode) {
    for (int i = 0; i < 3; ++i) CHECK(t->dims[i] >= 1 && t->dims[i] <= 65536, DQ_ERR_TENSOR);
    CHECK(dq_tensor_elems(t) <= (1 << 24), DQ_ERR_TENSOR);
    if (mode == DQ_MODE_S8) {
        CHECK(t->bits == 8 && t->frac_bits == 0, DQ_ERR_TENSOR);
        CHECK(t->zero_point >= -128 && t->zero_point <= 127, DQ_ERR_TENSOR);
    } else {
        CHECK(t->bits >= 2 && t->bits <= 8 && t->zero_point == 0, DQ_ERR_TENSOR);
        CHECK(t->frac_bits >= -16 && t->frac_bits <= 24, DQ_ERR_TENSOR);
    }
    return DQ_OK;
}

static dq_status read_header(dq_model *m, const uint8_t *buffer, size_t length) {
    CHECK(length >= sizeof(dq_header), DQ_ERR_TRUNCATED);
    memcpy(&m->header, buffer, sizeof(dq_header));
    const dq_header *h = &m->header;
    CHECK(memcmp(h->magic, "DQRT", 4) == 0, DQ_ERR_MAGIC);
    CHECK(h->version == DQ_FORMAT_VERSION, DQ_ERR_VERSION);
    CHECK(h->mode == DQ_MODE_S8 || h->mode == DQ_MODE_FX, DQ_ERR_PARAM);
    CHECK(h->n_tensors >= 1 && h->n_tensors <= DQ_MAX_TENSORS, DQ_ERR_LIMITS);
    CHECK(h->n_ops >= 1 && h->n_ops <= DQ_MAX_OPS, DQ_ERR_LIMITS);
    uint64_t need = sizeof(dq_header) + (uint64_t)h->n_tensors * sizeof(dq_tensor) +
                    (uint64_t)h->n_ops * sizeof(dq_op) + h->data_bytes;
    CHECK(length >= need, DQ_ERR_TRUNCATED);
    CHECK(h->input < h->n_tensors && h->output < h->n_tensors, DQ_ERR_TENSOR);
    m->buffer = buffer;
    m->tensors = (const dq_tensor *)(buffer + sizeof(dq_header));
    m->ops = (const dq_op *)((const uint8_t *)m->tensors + h->n_tensors * sizeof(dq_tensor));
    m->data = (const uint8_t *)m->ops + h->n_ops * sizeof(dq_op);
    return DQ_OK;
}

/* Each tensor but the input is written by exactly one op, before any op reads it. */
static dq_status check_order(const dq_model *m) {
    uint8_t written[DQ_MAX_TENSORS] = {0};
    written[m->header.input] = 1;
    for (uint32_t i = 0; i < m->header.n_ops; ++i) {
        const dq_op *op = &m->ops[i];
        CHECK(op->n_inputs >= 1 && op->n_inputs <= DQ_MAX_INPUTS, DQ_ERR_OP);
        for (uint32_t k = 0; k < op->n_inputs; ++k) {
            CHECK(op->inputs[k] < m->header.n_tensors, DQ_ERR_TENSOR);
            CHECK(written[op->inputs[k]], DQ_ERR_ORDER);
        }
        CHECK(op->output < m->header.n_tensors, DQ_ERR_TENSOR);
        CHECK(!written[op->output], DQ_ERR_ORDER);
        written[op->output] = 1;
    }
    CHECK(written[m->header.output] && m->header.output != m->header.input, DQ_ERR_ORDER);
    return DQ_OK;
}

/* Greedy arena plan over buffers: tensors live from the op that writes them to the
 * last op that reads them; the scratch of op i (dq_kernels.h) lives for the whole
 * dq_invoke call (kernels keep prepared data there between samples, dq_ctx). Each
 * buffer, tensors first, takes the lowest 4-aligned offset free of every buffer
 * placed before it whose lifetime overlaps. Without scratch this is the tensor plan. */
typedef struct { int16_t first, last; } live_range;

static live_range buffer_range(const live_range *tensor_live, uint32_t n_tensors, uint32_t b) {
    if (b < n_tensors) return tensor_live[b];
    live_range whole_run = {-1, DQ_MAX_OPS};         /* scratch: its op's, for the whole call */
    return whole_run;
}

static uint32_t *buffer_offset(dq_model *m, uint32_t b) {
    return b < m->header.n_tensors ? &m->tensor_offset[b] : &m->scratch_offset[b - m->header.n_tensors];
}

/* scratch: asked of the op's kernel each time (a few operations; dq_model stays small) */
static uint32_t buffer_size(const dq_model *m, uint32_t b) {
    const uint32_t n = m->header.n_tensors;
    return ((b < n ? m->tensor_bytes[b] : dq_op_scratch_request(m, &m->ops[b - n])) + 3) & ~3u;
}

static void tensor_lives(const dq_model *m, live_range *live) {
    for (uint32_t t = 0; t < m->header.n_tensors; ++t) { live[t].first = -1; live[t].last = -1; }
    for (uint32_t i = 0; i < m->header.n_ops; ++i) {
        const dq_op *op = &m->ops[i];
        for (uint32_t k = 0; k < op->n_inputs; ++k) live[op->inputs[k]].last = (int16_t)i;
        live[op->output].first = (int16_t)i;
        live[op->output].last = (int16_t)i;
    }
    live[m->header.output].last = (int16_t)m->header.n_ops;
}

static void plan_arena(dq_model *m) {
    live_range live[DQ_MAX_TENSORS];
    const uint32_t n = m->header.n_tensors, n_buffers = n + m->header.n_ops;
    tensor_lives(m, live);
    for (uint32_t t = 0; t < n; ++t) m->tensor_bytes[t] = (uint32_t)dq_tensor_elems(&m->tensors[t]);
    m->arena_bytes = 0;
    for (uint32_t b = 0; b < n_buffers; ++b) {
        const live_range rb = buffer_range(live, n, b);
        const uint32_t size = buffer_size(m, b);
        uint32_t at = 0;
        for (int moved = size > 0; moved;) {
            moved = 0;
            for (uint32_t u = 0; u < b; ++u) {
                const live_range ru = buffer_range(live, n, u);
                const uint32_t u_at = *buffer_offset(m, u), u_size = buffer_size(m, u);
                const int overlap_time = !(ru.last < rb.first || rb.last < ru.first);
                const int overlap_space = u_size > 0 && at < u_at + u_size && u_at < at + size;
                if (overlap_time && overlap_space) { at = u_at + u_size; moved = 1; }
            }
        }
        *buffer_offset(m, b) = at;
        if (at + size > m->arena_bytes) m->arena_bytes = at + size;
    }
}

dq_status dq_model_init(dq_model *m, const uint8_t *buffer, size_t length) {
    CHECK(m != NULL && buffer != NULL, DQ_ERR_ARG);
    CHECK(((uintptr_t)buffer & 3) == 0, DQ_ERR_ARG);
    dq_status s = read_header(m, buffer, length);
    if (s != DQ_OK) return s;
    for (uint32_t t = 0; t < m->header.n_tensors; ++t)
        if ((s = check_tensor(&m->tensors[t], m->header.mode)) != DQ_OK) return s;
    if ((s = check_order(m)) != DQ_OK) return s;
    for (uint32_t i = 0; i < m->header.n_ops; ++i)
        if ((s = dq_check_op(m, &m->ops[i])) != DQ_OK) return s;
    plan_arena(m);
    return DQ_OK;
}

size_t dq_arena_bytes(const dq_model *m) { return m->arena_bytes; }

size_t dq_tensor_bytes(const dq_model *m, uint32_t t) {
    return t < m->header.n_tensors ? m->tensor_bytes[t] : 0;
}

size_t dq_scratch_bytes(const dq_model *m, uint32_t op) {
    return op < m->header.n_ops ? dq_op_scratch_request(m, &m->ops[op]) : 0;
}

size_t dq_model_struct_bytes(void) { return sizeof(dq_model); }

const char *dq_status_name(dq_status s) {
    static const char *names[] = {"DQ_OK", "DQ_ERR_ARG", "DQ_ERR_TRUNCATED", "DQ_ERR_MAGIC",
                                  "DQ_ERR_VERSION", "DQ_ERR_LIMITS", "DQ_ERR_TENSOR",
                                  "DQ_ERR_OP", "DQ_ERR_DATA", "DQ_ERR_SHAPE", "DQ_ERR_PARAM",
                                  "DQ_ERR_ORDER"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "DQ_ERR_UNKNOWN";
}
