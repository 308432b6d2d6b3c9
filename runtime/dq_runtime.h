/* dq_runtime.h: the public API of the deployq C runtime.
 *
 * A model is a byte buffer in the deployq runtime format (written by deployq's
 * mcu-int8 and fpga-fixed exporters). dq_model_init validates all of it once:
 * afterwards dq_invoke does no checks and no allocation; it works in a caller-given
 * arena of dq_arena_bytes() bytes. Tensors are int8, per sample, in NHWC order.
 * Every function returns a dq_status; dq_status_name names it. */
#ifndef DQ_RUNTIME_H
#define DQ_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#define DQ_FORMAT_VERSION 1
#define DQ_MAX_TENSORS 128
#define DQ_MAX_OPS 128
#define DQ_MAX_INPUTS 8
#define DQ_NUM_PARAMS 24
#define DQ_NUM_DATA 4

typedef enum {
    DQ_OK = 0,
    DQ_ERR_ARG,          /* a null pointer or a negative count */
    DQ_ERR_TRUNCATED,    /* the buffer is shorter than its header says */
    DQ_ERR_MAGIC,        /* not a deployq runtime model */
    DQ_ERR_VERSION,      /* a format version this runtime does not read */
    DQ_ERR_LIMITS,       /* more tensors or ops than DQ_MAX_TENSORS / DQ_MAX_OPS */
    DQ_ERR_TENSOR,       /* a tensor index, shape or quantization out of range */
    DQ_ERR_OP,           /* an unknown op type or a bad operand list */
    DQ_ERR_DATA,         /* a constant outside the data section, misaligned or short */
    DQ_ERR_SHAPE,        /* operand shapes that do not fit the op */
    DQ_ERR_PARAM,        /* an op parameter out of range */
    DQ_ERR_ORDER,        /* a tensor read before it is written */
} dq_status;

typedef enum { DQ_MODE_S8 = 1, DQ_MODE_FX = 2 } dq_mode;

typedef enum {
    DQ_OP_CONV2D = 1, DQ_OP_DEPTHWISE_CONV2D, DQ_OP_FULLY_CONNECTED, DQ_OP_ADD,
    DQ_OP_MAX_POOL, DQ_OP_AVG_POOL, DQ_OP_MEAN, DQ_OP_CONCAT, DQ_OP_RESHAPE,
    DQ_OP_TRANSPOSE, DQ_OP_PAD, DQ_OP_CLAMP, DQ_OP_SLICE,
    /* 14-17: pointwise activations */
    DQ_OP_LOGISTIC, DQ_OP_TANH, DQ_OP_HARD_SWISH, DQ_OP_LEAKY_RELU,
    DQ_OP_MUL, DQ_OP_RESIZE_NEAREST, DQ_OP_TRANSPOSE_CONV, DQ_OP_COUNT
} dq_op_type;

/* File records, little-endian, packed as laid out (all fields 4 bytes). */
typedef struct {
    char magic[4];            /* "DQRT" */
    uint32_t version;         /* DQ_FORMAT_VERSION */
    uint32_t mode;            /* dq_mode */
    uint32_t n_tensors, n_ops;
    uint32_t input, output;   /* tensor indices */
    uint32_t data_bytes;      /* size of the data section that follows the ops */
} dq_header;

typedef struct {
    int32_t dims[3];          /* per-sample shape: H, W, C (a vector is 1, 1, N) */
    int32_t zero_point;       /* MCU: int8 zero point; FPGA: 0 */
    int32_t bits;             /* storage bits, 2..8 (MCU: 8) */
    int32_t frac_bits;        /* FPGA: value = q * 2^-frac_bits; MCU: 0 */
} dq_tensor;

typedef struct {
    uint32_t type;                    /* dq_op_type */
    uint32_t n_inputs;
    uint32_t inputs[DQ_MAX_INPUTS];
    uint32_t output;
    int32_t params[DQ_NUM_PARAMS];    /* per op type: see dq_ops.h */
    uint32_t data_offset[DQ_NUM_DATA];/* byte offsets into the data section */
    uint32_t data_count[DQ_NUM_DATA]; /* element counts */
} dq_op;

typedef struct {
    const uint8_t *buffer;
    dq_header header;
    const dq_tensor *tensors;         /* aligned views into the buffer */
    const dq_op *ops;
    const uint8_t *data;
    uint32_t tensor_offset[DQ_MAX_TENSORS];   /* arena offsets, planned at init */
    uint32_t tensor_bytes[DQ_MAX_TENSORS];
    uint32_t scratch_offset[DQ_MAX_OPS];      /* each op's kernel scratch, in the arena */
    uint32_t arena_bytes;
} dq_model;

dq_status dq_model_init(dq_model *model, const uint8_t *buffer, size_t length);
size_t dq_arena_bytes(const dq_model *model);
size_t dq_tensor_bytes(const dq_model *model, uint32_t tensor);

/* Scratch memory the kernel of op `op` asked for (planned inside the arena, live only
 * while that op runs); 0 for the reference kernels and for an index out of range. */
size_t dq_scratch_bytes(const dq_model *model, uint32_t op);

/* The kernel set this library was built with: "ref" (the reference loops, the
 * default) or "opt" (cc -DDQ_KERNELS=opt); both compute the same integers. */
const char *dq_kernels_name(void);

/* Runs n samples: input holds n * input bytes, output n * output bytes. */
dq_status dq_invoke(const dq_model *model, uint8_t *arena, const int8_t *input,
                    int8_t *output, int32_t n);

/* Runs one sample and copies every tensor, in index order, into dump
 * (sum of dq_tensor_bytes over all tensors). */
dq_status dq_invoke_dump(const dq_model *model, uint8_t *arena, const int8_t *input,
                         int8_t *dump);

/* Host profiling (dq_profile.c, not part of a microcontroller build): runs one sample
 * `runs` times and adds each op's processor time (clock() ticks) into ticks[op]. */
dq_status dq_invoke_profile(const dq_model *model, uint8_t *arena, const int8_t *input,
                            int32_t runs, int64_t *ticks);
int64_t dq_clocks_per_sec(void);

const char *dq_status_name(dq_status status);
size_t dq_model_struct_bytes(void);

/* The multiplier rule of the MCU mode, exposed so Python can check its own copy:
 * real = m * 2^(shift - 31), as TFLite's QuantizeMultiplier computes it. */
void dq_quantize_multiplier(double real, int32_t *m, int32_t *shift);

#endif
