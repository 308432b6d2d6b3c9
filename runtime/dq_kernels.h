/* dq_kernels.h: the kernel table. Every op's kernel is called through one table of
 * function pointers, chosen when the library is built:
 *
 *   cc ...                    the reference set (dq_ops.h): plain loops, the default
 *   cc -DDQ_KERNELS=opt ...   the optimized set: faster kernels where there are any,
 *                             the reference kernel elsewhere
 *
 * Both sets compute the same integers on every tensor (tests/runtime/test_kernels.py
 * checks it). A kernel that needs working memory declares a scratch query, as TFLM's
 * RequestScratchBufferInArena and CMSIS-NN's *_get_buffer_size do: the bytes it needs
 * for the op's shapes. dq_model_init plans that memory in the arena (the op's own for
 * the whole dq_invoke call, dq_ops.h's dq_ctx) and the kernel receives it in its
 * dq_ctx. NULL: no scratch. */
#ifndef DQ_KERNELS_H
#define DQ_KERNELS_H

#include <stddef.h>

#include "dq_ops.h"

typedef dq_status (*dq_conv_s8_fn)(const dq_ctx *, const dq_window *, const dq_requant_s8 *,
                                   const dq_dims *, const int8_t *, const int8_t *,
                                   const int32_t *, const dq_dims *, int8_t *);
typedef dq_status (*dq_fc_s8_fn)(const dq_ctx *, const dq_requant_s8 *, int32_t,
                                 const int8_t *, const int8_t *, const int32_t *, int32_t,
                                 int8_t *);
typedef dq_status (*dq_conv_fx_fn)(const dq_ctx *, const dq_window *, const dq_requant_fx *,
                                   const dq_dims *, const int8_t *, const int8_t *,
                                   const int32_t *, const dq_dims *, int8_t *);
typedef dq_status (*dq_fc_fx_fn)(const dq_ctx *, const dq_requant_fx *, int32_t,
                                 const int8_t *, const int8_t *, const int32_t *, int32_t,
                                 int8_t *);
/* Scratch bytes for a window op (fully connected: w NULL, dims 1 x 1 x n). */
typedef size_t (*dq_scratch_fn)(const dq_window *w, const dq_dims *in_dims,
                                const dq_dims *out_dims);

typedef struct {
    dq_conv_s8_fn conv2d_s8, depthwise_conv2d_s8;
    dq_fc_s8_fn fully_connected_s8;
    dq_scratch_fn conv2d_s8_scratch, depthwise_conv2d_s8_scratch, fully_connected_s8_scratch;
    dq_conv_fx_fn conv2d_fx, depthwise_conv2d_fx;
    dq_fc_fx_fn fully_connected_fx;
    dq_scratch_fn conv2d_fx_scratch, depthwise_conv2d_fx_scratch, fully_connected_fx_scratch;
    dq_status (*add_s8)(const dq_add_s8_params *, int32_t, const int8_t *, const int8_t *,
                        int8_t *);
    dq_status (*max_pool_s8)(const dq_window *, int32_t, int32_t, const dq_dims *,
                             const int8_t *, const dq_dims *, int8_t *);
    dq_status (*avg_pool_s8)(const dq_window *, int32_t, int32_t, const dq_dims *,
                             const int8_t *, const dq_dims *, int8_t *);
    dq_status (*mean_s8)(const dq_mean_s8_params *, const dq_dims *, const int8_t *,
                         int8_t *);
    dq_status (*add_fx)(const dq_requant_fx *, int32_t, const int8_t *, int32_t,
                        const int8_t *, int32_t, int8_t *);
    dq_status (*avg_pool_fx)(const dq_window *, const dq_requant_fx *,
                             const dq_mean_fx_params *, const dq_dims *, const int8_t *,
                             const dq_dims *, int8_t *);
    dq_status (*mean_fx)(const dq_requant_fx *, const dq_mean_fx_params *, const dq_dims *,
                         const int8_t *, int8_t *);
    dq_status (*lut_s8)(const int8_t *, int32_t, const int8_t *, int8_t *);
    dq_status (*hard_swish_s8)(const dq_ctx *, const dq_hard_swish_s8_params *, int32_t,
                               const int8_t *, int8_t *);
    dq_status (*leaky_relu_s8)(const dq_ctx *, const dq_leaky_relu_s8_params *, int32_t,
                               const int8_t *, int8_t *);
    dq_scratch_fn activation_s8_scratch;     /* HARD_SWISH and LEAKY_RELU, S8 mode */
    dq_status (*mul_s8)(const dq_mul_s8_params *, const dq_dims *, const int8_t *,
                        const dq_dims *, const int8_t *, const dq_dims *, int8_t *);
    dq_status (*mul_fx)(const dq_requant_fx *, const dq_dims *, const int8_t *,
                        const dq_dims *, const int8_t *, const dq_dims *, int8_t *);
    const char *name;
} dq_kernel_set;

/* The set this library was built with (dq_kernels.c). */
extern const dq_kernel_set dq_kernels;

/* Optimized kernels (dq_*_opt.c), each bit-exact with its reference kernel. */
dq_status dq_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w, const dq_requant_s8 *q,
                           const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const dq_dims *out_dims, int8_t *out);
size_t dq_conv2d_s8_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                const dq_dims *out_dims);
dq_status dq_depthwise_conv2d_s8_opt(const dq_ctx *ctx, const dq_window *w,
                                     const dq_requant_s8 *q, const dq_dims *in_dims,
                                     const int8_t *in, const int8_t *filter,
                                     const int32_t *bias, const dq_dims *out_dims,
                                     int8_t *out);
dq_status dq_fully_connected_s8_opt(const dq_ctx *ctx, const dq_requant_s8 *q, int32_t n_in,
                                    const int8_t *in, const int8_t *filter,
                                    const int32_t *bias, int32_t n_out, int8_t *out);
size_t dq_fully_connected_s8_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                         const dq_dims *out_dims);
dq_status dq_conv2d_fx_opt(const dq_ctx *ctx, const dq_window *w, const dq_requant_fx *q,
                           const dq_dims *in_dims, const int8_t *in, const int8_t *filter,
                           const int32_t *bias, const dq_dims *out_dims, int8_t *out);
size_t dq_conv2d_fx_opt_scratch(const dq_window *w, const dq_dims *in_dims,
                                const dq_dims *out_dims);
dq_status dq_fully_connected_fx_opt(const dq_ctx *ctx, const dq_requant_fx *q, int32_t n_in,
                                    const int8_t *in, const int8_t *filter,
                                    const int32_t *bias, int32_t n_out, int8_t *out);
dq_status dq_add_s8_opt(const dq_add_s8_params *p, int32_t n, const int8_t *in1,
                        const int8_t *in2, int8_t *out);
dq_status dq_max_pool_s8_opt(const dq_window *w, int32_t act_min, int32_t act_max,
                             const dq_dims *in_dims, const int8_t *in,
                             const dq_dims *out_dims, int8_t *out);
dq_status dq_mul_s8_opt(const dq_mul_s8_params *p, const dq_dims *d1, const int8_t *in1,
                        const dq_dims *d2, const int8_t *in2, const dq_dims *out_dims,
                        int8_t *out);
/* HARD_SWISH and LEAKY_RELU as a 256-entry table the reference kernel fills on the
 * first sample (dq_activation_opt.c); both ask for the same 256 scratch bytes. */
dq_status dq_hard_swish_s8_lut(const dq_ctx *ctx, const dq_hard_swish_s8_params *p,
                               int32_t n, const int8_t *in, int8_t *out);
dq_status dq_leaky_relu_s8_lut(const dq_ctx *ctx, const dq_leaky_relu_s8_params *p,
                               int32_t n, const int8_t *in, int8_t *out);
size_t dq_activation_s8_lut_scratch(const dq_window *w, const dq_dims *in_dims,
                                    const dq_dims *out_dims);

#endif
