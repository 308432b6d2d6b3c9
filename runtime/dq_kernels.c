/* The kernel table of this build (dq_kernels.h): -DDQ_KERNELS=opt selects the
 * optimized set, anything else but ref is an error, and no flag means ref. */
#include "dq_kernels.h"

#define DQ_KERNELS_ref 1
#define DQ_KERNELS_opt 2
#define DQ_CAT_(a, b) a##b
#define DQ_CAT(a, b) DQ_CAT_(a, b)
#ifndef DQ_KERNELS
#define DQ_KERNELS ref
#endif
#define DQ_SET DQ_CAT(DQ_KERNELS_, DQ_KERNELS)
#if DQ_SET != DQ_KERNELS_ref && DQ_SET != DQ_KERNELS_opt
#error "DQ_KERNELS must be ref or opt"
#endif

#if DQ_SET == DQ_KERNELS_opt
const dq_kernel_set dq_kernels = {
    .conv2d_s8 = dq_conv2d_s8_opt, .conv2d_s8_scratch = dq_conv2d_s8_opt_scratch,
    .depthwise_conv2d_s8 = dq_depthwise_conv2d_s8_opt,
    .fully_connected_s8 = dq_fully_connected_s8_opt,
    .fully_connected_s8_scratch = dq_fully_connected_s8_opt_scratch,
    .conv2d_fx = dq_conv2d_fx_opt, .conv2d_fx_scratch = dq_conv2d_fx_opt_scratch,
    .depthwise_conv2d_fx = dq_depthwise_conv2d_fx,
    .fully_connected_fx = dq_fully_connected_fx_opt,
    .add_s8 = dq_add_s8_opt, .max_pool_s8 = dq_max_pool_s8_opt, .avg_pool_s8 = dq_avg_pool_s8,
    .mean_s8 = dq_mean_s8, .add_fx = dq_add_fx, .avg_pool_fx = dq_avg_pool_fx,
    .mean_fx = dq_mean_fx, .mul_s8 = dq_mul_s8_opt, .mul_fx = dq_mul_fx, .name = "opt",
    .lut_s8 = dq_lut_s8, .hard_swish_s8 = dq_hard_swish_s8_lut,
    .leaky_relu_s8 = dq_leaky_relu_s8_lut, .activation_s8_scratch = dq_activation_s8_lut_scratch,
};
#else
/* The reference activations take no context (dq_ops.h); the table's entries do. */
static dq_status hard_swish_s8_ref(const dq_ctx *ctx, const dq_hard_swish_s8_params *p,
                                   int32_t n, const int8_t *in, int8_t *out) {
    (void)ctx;
    return dq_hard_swish_s8(p, n, in, out);
}

static dq_status leaky_relu_s8_ref(const dq_ctx *ctx, const dq_leaky_relu_s8_params *p,
                                   int32_t n, const int8_t *in, int8_t *out) {
    (void)ctx;
    return dq_leaky_relu_s8(p, n, in, out);
}

const dq_kernel_set dq_kernels = {
    .conv2d_s8 = dq_conv2d_s8, .depthwise_conv2d_s8 = dq_depthwise_conv2d_s8,
    .fully_connected_s8 = dq_fully_connected_s8,
    .conv2d_fx = dq_conv2d_fx, .depthwise_conv2d_fx = dq_depthwise_conv2d_fx,
    .fully_connected_fx = dq_fully_connected_fx,
    .add_s8 = dq_add_s8, .max_pool_s8 = dq_max_pool_s8, .avg_pool_s8 = dq_avg_pool_s8,
    .mean_s8 = dq_mean_s8, .add_fx = dq_add_fx, .avg_pool_fx = dq_avg_pool_fx,
    .mean_fx = dq_mean_fx, .mul_s8 = dq_mul_s8, .mul_fx = dq_mul_fx, .name = "ref",
    .lut_s8 = dq_lut_s8, .hard_swish_s8 = hard_swish_s8_ref, .leaky_relu_s8 = leaky_relu_s8_ref,
};
#endif

const char *dq_kernels_name(void) { return dq_kernels.name; }
