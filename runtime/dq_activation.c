/* Pointwise activations. MCU int8 mode follows LiteRT's reference int8 kernels
 * (docs/tflite-int8-arithmetic.md): LOGISTIC and TANH look up a table the exporter
 * computed by TFLite's LUT rule; HARD_SWISH is TFLite's int16 fixed-point algorithm;
 * LEAKY_RELU requantizes with one multiplier per sign. In FPGA fixed-point mode every
 * activation is a table indexed by the input code (docs/fpga-fixed.md), like a ROM. */
#include "dq_ops.h"

dq_status dq_lut_s8(const int8_t *table, int32_t n, const int8_t *in, int8_t *out) {
    for (int32_t i = 0; i < n; ++i) out[i] = table[(uint8_t)in[i]];
    return DQ_OK;
}

/* The "reluish" factor of x (hires units, Q0.15 of [0, 1]): x rescaled so that 3.0 is
 * 2^15, saturated to [-1, 1], then mapped affinely onto [0, 1]. A left shift saturates
 * all but its last bit before the multiplier, so saturation there cannot change the
 * result; the last bit saturates after it. */
static int16_t reluish(const dq_hard_swish_s8_params *p, int16_t hires) {
    int16_t v = hires;
    if (p->reluish_exponent > 0) v = dq_sat_left_shift_s16(v, p->reluish_exponent - 1);
    v = dq_srdhm_s16(v, p->reluish_multiplier);
    if (p->reluish_exponent > 0) v = dq_sat_left_shift_s16(v, 1);
    if (p->reluish_exponent < 0) v = dq_rounding_divide_by_pot_s16(v, -p->reluish_exponent);
    return (int16_t)((v + (1 << 15)) >> 1);
}

dq_status dq_hard_swish_s8(const dq_hard_swish_s8_params *p, int32_t n, const int8_t *in,
                           int8_t *out) {
    for (int32_t i = 0; i < n; ++i) {
        const int16_t hires = (int16_t)((in[i] - p->input_zero_point) * (1 << 7));
        const int16_t preshift = dq_srdhm_s16(hires, p->output_multiplier);
        const int16_t y = dq_sdhm_s16(reluish(p, hires), preshift);
        /* the zero point is added in int16, as TFLite does (it wraps there) */
        const int16_t v = (int16_t)(dq_rounding_divide_by_pot_s16(y, -p->output_exponent) +
                                    p->output_zero_point);
        out[i] = (int8_t)dq_clamp(v, -128, 127);
    }
    return DQ_OK;
}

dq_status dq_leaky_relu_s8(const dq_leaky_relu_s8_params *p, int32_t n, const int8_t *in,
                           int8_t *out) {
    for (int32_t i = 0; i < n; ++i) {
        const int32_t x = in[i] + p->input_offset;
        const int32_t m = x >= 0 ? p->identity_multiplier : p->alpha_multiplier;
        const int32_t s = x >= 0 ? p->identity_shift : p->alpha_shift;
        const int64_t v = (int64_t)dq_mul_by_quantized_multiplier(x, m, s, p->rounding) +
                          p->output_offset;
        out[i] = (int8_t)(v < p->act_min ? p->act_min : (v > p->act_max ? p->act_max : v));
    }
    return DQ_OK;
}
