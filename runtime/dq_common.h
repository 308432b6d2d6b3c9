/* dq_common.h: the one place for rounding, shifting, saturation and fixed-point
 * multiplication. Every kernel calls these; none rounds or saturates by itself.
 *
 * MCU int8 mode (TFLite / TFLite Micro arithmetic)
 *   A real multiplier M in (0, 2^31) is stored as (m, shift): M = m * 2^(shift - 31),
 *   m in [2^30, 2^31) (or 0), shift in [-31, 30].
 *   DQ_ROUND_DOUBLE (TFLite reference kernels and TFLM by default):
 *     x * M = RDivPOT(SRDHM(x * 2^max(shift,0), m), max(-shift,0))
 *     SRDHM(a, b) = high 32 bits of 2ab, rounded half away from zero, saturating the
 *                   one overflow case a = b = INT32_MIN.
 *     RDivPOT(x, e) = x / 2^e rounded half away from zero (e in [0, 31]).
 *   DQ_ROUND_SINGLE (TFLITE_SINGLE_ROUNDING, CMSIS-NN's build flag):
 *     x * M = (x * m + 2^(30 - shift)) >> (31 - shift), arithmetic shift, i.e. one
 *     rounding, half toward plus infinity; saturated to int32.
 *
 * FPGA fixed-point mode (HLS ap_fixed semantics)
 *   A value with f fractional bits is the integer v meaning v * 2^-f. Requantization
 *   shifts right by s bits with one of three quantization modes:
 *     DQ_FX_TRN       truncate toward minus infinity (ap_fixed AP_TRN, the default)
 *     DQ_FX_RND       round half toward plus infinity (AP_RND)
 *     DQ_FX_RND_CONV  round half to even (AP_RND_CONV)
 *   and fits the result into b bits (two's complement) with one overflow mode:
 *     DQ_FX_SAT   saturate to [-2^(b-1), 2^(b-1) - 1] (AP_SAT)
 *     DQ_FX_WRAP  keep the low b bits, sign-extended (AP_WRAP, the default)
 *   Accumulators have an explicit width (<= 32 bits) with the same overflow modes.
 */
#ifndef DQ_COMMON_H
#define DQ_COMMON_H

#include <assert.h>
#include <stdint.h>

typedef enum { DQ_ROUND_DOUBLE = 0, DQ_ROUND_SINGLE = 1 } dq_rounding;
typedef enum { DQ_FX_TRN = 0, DQ_FX_RND = 1, DQ_FX_RND_CONV = 2 } dq_fx_quant;
typedef enum { DQ_FX_WRAP = 0, DQ_FX_SAT = 1 } dq_fx_overflow;

static inline int32_t dq_clamp(int32_t x, int32_t lo, int32_t hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

static inline int32_t dq_sat_s32(int64_t x) {
    return x < INT32_MIN ? INT32_MIN : (x > INT32_MAX ? INT32_MAX : (int32_t)x);
}

/* Saturating rounding doubling high multiply (gemmlowp). */
static inline int32_t dq_srdhm(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1LL << 30) : (1 - (1LL << 30));
    return (int32_t)((ab + nudge) / (1LL << 31));   /* C99 division truncates toward 0 */
}

/* x / 2^e, rounded half away from zero; e in [0, 31]. */
static inline int32_t dq_rounding_divide_by_pot(int32_t x, int e) {
    assert(e >= 0 && e <= 31);
    int32_t mask = (int32_t)((1LL << e) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (remainder > threshold ? 1 : 0);
}

/* x * m * 2^(shift - 31) with the given rounding variant; shift in [-31, 30]. */
static inline int32_t dq_mul_by_quantized_multiplier(int32_t x, int32_t m, int shift,
                                                    dq_rounding r) {
    assert(shift >= -31 && shift <= 30);
    if (r == DQ_ROUND_SINGLE) {
        int total = 31 - shift;
        int64_t v = (int64_t)x * m + (1LL << (total - 1));
        return dq_sat_s32(v >> total);
    }
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    return dq_rounding_divide_by_pot(dq_srdhm((int32_t)((int64_t)x * (1LL << left)), m),
                                     right);
}

/* TFLite's requantization of an int32 accumulator to an int8 output. */
static inline int8_t dq_requantize_s8(int32_t acc, int32_t m, int shift, int32_t out_offset,
                                      int32_t act_min, int32_t act_max, dq_rounding r) {
    int64_t v = (int64_t)dq_mul_by_quantized_multiplier(acc, m, shift, r) + out_offset;
    return (int8_t)(v < act_min ? act_min : (v > act_max ? act_max : v));
}

/* Integer division rounded half away from zero (TFLite's average pooling and mean). */
static inline int32_t dq_div_round_away(int32_t num, int32_t den) {
    assert(den > 0);
    int64_t n = num;
    return (int32_t)(n > 0 ? (n + den / 2) / den : (n - den / 2) / den);
}

/* --- int16 fixed point (TFLite's quantized HARD_SWISH) ------------------------------ */

static inline int16_t dq_sat_s16(int64_t x) {
    return (int16_t)(x < INT16_MIN ? INT16_MIN : (x > INT16_MAX ? INT16_MAX : x));
}

/* gemmlowp's SaturatingRoundingDoublingHighMul on int16: a * b / 2^15 rounded half away
 * from zero; the one overflow case a = b = INT16_MIN gives INT16_MAX. */
static inline int16_t dq_srdhm_s16(int16_t a, int16_t b) {
    if (a == INT16_MIN && b == INT16_MIN) return INT16_MAX;
    int32_t ab = (int32_t)a * b;
    int32_t nudge = ab >= 0 ? (1 << 14) : (1 - (1 << 14));
    return (int16_t)((ab + nudge) / (1 << 15));      /* C99 division truncates toward 0 */
}

/* The same without the rounding nudge (TFLite's SaturatingDoublingHighMul): truncated
 * toward zero. */
static inline int16_t dq_sdhm_s16(int16_t a, int16_t b) {
    if (a == INT16_MIN && b == INT16_MIN) return INT16_MAX;
    return (int16_t)(((int32_t)a * b) / (1 << 15));
}

/* x * 2^e saturated to int16; e in [0, 31]. */
static inline int16_t dq_sat_left_shift_s16(int16_t x, int e) {
    assert(e >= 0 && e <= 31);
    return dq_sat_s16((int64_t)x * ((int64_t)1 << e));
}

/* x / 2^e rounded half away from zero, on int16 (gemmlowp's RoundingDivideByPOT);
 * e in [0, 15]. */
static inline int16_t dq_rounding_divide_by_pot_s16(int16_t x, int e) {
    assert(e >= 0 && e <= 15);
    int16_t mask = (int16_t)((1 << e) - 1);
    int16_t remainder = (int16_t)(x & mask);
    int16_t threshold = (int16_t)((mask >> 1) + (x < 0 ? 1 : 0));
    return (int16_t)((x >> e) + (remainder > threshold ? 1 : 0));
}

/* --- fixed point ------------------------------------------------------------------ */

/* x >> s with the quantization mode; s in [-24, 62]; s < 0 shifts left (|x| < 2^38). */
static inline int64_t dq_fx_shift(int64_t x, int s, dq_fx_quant q) {
    assert(s >= -24 && s <= 62);
    if (s <= 0) return x * ((int64_t)1 << -s);
    int64_t floor = x >> s;                        /* arithmetic: toward -infinity */
    int64_t rem = x - floor * ((int64_t)1 << s);   /* in [0, 2^s) */
    int64_t half = (int64_t)1 << (s - 1);
    if (q == DQ_FX_TRN) return floor;
    if (q == DQ_FX_RND) return floor + (rem >= half);
    return floor + (rem > half || (rem == half && (floor & 1)));   /* DQ_FX_RND_CONV */
}

/* x fitted into `bits` bits (2..32) by the overflow mode. */
static inline int32_t dq_fx_fit(int64_t x, int bits, dq_fx_overflow o) {
    assert(bits >= 2 && bits <= 32);
    int64_t lo = -((int64_t)1 << (bits - 1)), hi = ((int64_t)1 << (bits - 1)) - 1;
    if (o == DQ_FX_SAT) return (int32_t)(x < lo ? lo : (x > hi ? hi : x));
    uint64_t low = (uint64_t)x & ((((uint64_t)1) << bits) - 1);
    int64_t v = (int64_t)low;
    return (int32_t)(v > hi ? v - ((int64_t)1 << bits) : v);
}

/* One product added to an FX accumulator as an HLS kernel holding both in the
 * accumulator type does (hls4ml: mult = x * w; acc += mult): the product is fitted
 * first, then the sum. With WRAP this equals one fit of the exact sum (modular); with
 * SAT a product outside the accumulator saturates before it is added. */
static inline int64_t dq_fx_accumulate(int64_t acc, int64_t product, int bits,
                                       dq_fx_overflow o) {
    return dq_fx_fit(acc + dq_fx_fit(product, bits, o), bits, o);
}

/* x / n truncated toward zero (ap_fixed's division; C99's integer '/'), n >= 1. */
static inline int64_t dq_fx_divide(int64_t x, int32_t n) {
    assert(n >= 1);
    return x / n;
}

/* The FX requantization of every kernel: acc (frac(acc) fractional bits) to an output
 * of `bits` bits with frac(acc) - shift fractional bits: shifted with the quantization
 * mode, fitted by the overflow mode, then clamped to the activation range.
 * shift in [-24, 62], bits in [2, 8], act_min <= act_max within `bits` bits. */
static inline int8_t dq_fx_requantize(int64_t acc, int shift, dq_fx_quant q, int bits,
                                      dq_fx_overflow o, int32_t act_min, int32_t act_max) {
    assert(bits >= 2 && bits <= 8);
    assert(act_min <= act_max && act_min >= -(1 << (bits - 1)) && act_max < (1 << (bits - 1)));
    return (int8_t)dq_clamp(dq_fx_fit(dq_fx_shift(acc, shift, q), bits, o), act_min, act_max);
}

#endif
