/* dq_arm_dsp.h: the Armv7E-M DSP extension's SIMD32 operations that the Cortex-M
 * kernels (dq_*_dsp.c, dq_fully_connected_s8_opt.c) use, as ACLE intrinsics
 * (arm_acle.h) on a core that has them (__ARM_FEATURE_DSP: Cortex-M4, M7, M33 with
 * DSP, M55), and as portable C with -DDQ_DSP_PORTABLE, so that the host builds the
 * same algorithm: its scratch sizes give the exported project's arena
 * (deployq/cproject.py) and its integers are tested against the reference set on the
 * host (tests/runtime/test_kernels.py) as well as under QEMU.
 *
 * A word holds two int16 halves, lo = bits 0..15, hi = bits 16..31:
 *   dq_sxtb16(x)       bytes 0 and 2 of x, sign-extended: {x.b0, x.b2}
 *   dq_sxtb16_ror8(x)  bytes 1 and 3: {x.b1, x.b3}
 *   dq_sxtab16(a, x)   {a.lo + x.b0, a.hi + x.b2} (each half wraps in 16 bits)
 *   dq_smlad(a, b, c)  c + a.lo * b.lo + a.hi * b.hi (wraps in 32 bits)
 *   dq_smlabb / dq_smlatt  c + a.lo * b.lo / c + a.hi * b.hi
 *   dq_max4 / dq_min4  bytewise signed maximum / minimum (SSUB8 then SEL)
 * The kernels keep every half in int16 range and every sum in int32 range, so the
 * wrapping never happens and the two builds compute the same integers. */
#ifndef DQ_ARM_DSP_H
#define DQ_ARM_DSP_H

#include <stdint.h>
#include <string.h>

#include "dq_ops.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define DQ_DSP 1
#include <arm_acle.h>

static inline int32_t dq_sxtb16(uint32_t x) { return (int32_t)__sxtb16((int32_t)x); }
static inline int32_t dq_sxtb16_ror8(uint32_t x) {
    int32_t r;                      /* GCC 12's arm_acle.h has no __ror to fold into it */
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline int32_t dq_sxtab16(int32_t a, uint32_t x) { return (int32_t)__sxtab16(a, (int32_t)x); }
static inline int32_t dq_smlad(int32_t a, int32_t b, int32_t c) { return __smlad(a, b, c); }
static inline int32_t dq_smlabb(int32_t a, int32_t b, int32_t c) { return __smlabb(a, b, c); }
static inline int32_t dq_smlatt(int32_t a, int32_t b, int32_t c) { return __smlatt(a, b, c); }
/* bytewise signed max / min: SSUB8 sets the GE flags that SEL reads, in one asm block
 * so nothing can come between them */
static inline uint32_t dq_max4(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__("ssub8 %0, %1, %2\n\tsel %0, %1, %2" : "=&r"(r) : "r"(a), "r"(b));
    return r;
}
static inline uint32_t dq_min4(uint32_t a, uint32_t b) {
    uint32_t r;
    __asm__("ssub8 %0, %1, %2\n\tsel %0, %2, %1" : "=&r"(r) : "r"(a), "r"(b));
    return r;
}

#elif defined(DQ_DSP_PORTABLE)
#define DQ_DSP 1

static inline int32_t dq_lo(int32_t a) { return (int16_t)(uint16_t)((uint32_t)a & 0xFFFFu); }
static inline int32_t dq_hi(int32_t a) { return (int16_t)(uint16_t)((uint32_t)a >> 16); }
static inline int32_t dq_pack16(int32_t lo, int32_t hi) {
    return (int32_t)(((uint32_t)hi << 16) | ((uint32_t)lo & 0xFFFFu));
}
static inline int32_t dq_sxtb16(uint32_t x) {
    return dq_pack16((int8_t)(x & 0xFFu), (int8_t)((x >> 16) & 0xFFu));
}
static inline int32_t dq_sxtb16_ror8(uint32_t x) { return dq_sxtb16((x >> 8) | (x << 24)); }
static inline int32_t dq_sxtab16(int32_t a, uint32_t x) {
    const int32_t b = dq_sxtb16(x);
    return dq_pack16(dq_lo(a) + dq_lo(b), dq_hi(a) + dq_hi(b));
}
static inline int32_t dq_smlad(int32_t a, int32_t b, int32_t c) {
    return c + dq_lo(a) * dq_lo(b) + dq_hi(a) * dq_hi(b);
}
static inline int32_t dq_smlabb(int32_t a, int32_t b, int32_t c) { return c + dq_lo(a) * dq_lo(b); }
static inline int32_t dq_smlatt(int32_t a, int32_t b, int32_t c) { return c + dq_hi(a) * dq_hi(b); }
static inline uint32_t dq_bytewise(uint32_t a, uint32_t b, int take_max) {
    uint32_t r = 0;
    for (int i = 0; i < 32; i += 8) {
        const int8_t x = (int8_t)(a >> i), y = (int8_t)(b >> i);
        r |= (uint32_t)(uint8_t)((x >= y) == take_max ? x : y) << i;
    }
    return r;
}
static inline uint32_t dq_max4(uint32_t a, uint32_t b) { return dq_bytewise(a, b, 1); }
static inline uint32_t dq_min4(uint32_t a, uint32_t b) { return dq_bytewise(a, b, 0); }

#else
#define DQ_DSP 0
#endif

#if DQ_DSP
/* 4 bytes from any address (the Cortex-M4/M7 LDR allows unaligned addresses; GCC
 * compiles this memcpy to one LDR). */
static inline uint32_t dq_load4(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* two int16 halves (4 bytes) at a 2-byte-aligned address */
static inline int32_t dq_load2x16(const int16_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void dq_store2x16(int16_t *p, int32_t v) { memcpy(p, &v, 4); }

/* {offset, offset}: the input offset in both halves, for dq_sxtab16 */
static inline int32_t dq_dup16(int32_t offset) {
    return (int32_t)(((uint32_t)offset << 16) | ((uint32_t)offset & 0xFFFFu));
}
/* dq_requantize_s8 (dq_common.h) for the DSP kernels: the same integers, fewer
 * instructions on a 32-bit core (about 20 instead of 50 for DQ_ROUND_DOUBLE):
 *   SRDHM(a, m) = (a * m + 2^30) >> 31 in int64 (m >= 0, so the one saturating case
 *     a = m = INT32_MIN cannot occur, and for a * m < 0 adding 1 - 2^30 and dividing
 *     toward zero is the same floor), SMULL plus a 64-bit add and shift;
 *   RDivPOT as dq_common.h, with the mask in uint32 arithmetic;
 *   clamp(x + out_offset, lo, hi) as clamp(x, lo - out_offset, hi - out_offset) +
 *     out_offset, so no int64 is needed (the bounds are within [-255, 255]).
 * DQ_ROUND_SINGLE goes to dq_requantize_s8. */
static inline int8_t dq_requantize_s8_dsp(int32_t acc, int32_t m, int32_t shift,
                                          const dq_requant_s8 *q) {
    if (q->rounding != DQ_ROUND_DOUBLE)
        return dq_requantize_s8(acc, m, shift, q->output_offset, q->act_min, q->act_max,
                                q->rounding);
    const int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    const int32_t a = (int32_t)((uint32_t)acc << left);
    const int32_t x = (int32_t)(((int64_t)a * m + (1 << 30)) >> 31);
    const int32_t mask = (int32_t)(((uint32_t)1 << right) - 1u);
    const int32_t v = (x >> right) + ((x & mask) > (mask >> 1) + (x < 0));
    return (int8_t)(dq_clamp(v, q->act_min - q->output_offset, q->act_max - q->output_offset) +
                    q->output_offset);
}

/* --- int16 columns and dot products shared by the conv and fully connected kernels --
 *
 * A column holds the K values (x + input_offset) one output pixel reads, as int16, in
 * "quad order": within each complete group of 4 (positions 4i .. 4i + 3, 4i + 3 < K)
 * the middle two are swapped, i.e. {x0, x2, x1, x3}, the order in which dq_sxtb16 and
 * dq_sxtb16_ror8 unpack 4 int8 filter values {w0, w2} and {w1, w3}; so one SMLAD
 * pairs x0 * w0 + x2 * w2 and the next x1 * w1 + x3 * w3 without repacking the
 * filter (it stays int8 in flash). The last K % 4 values are in natural order. */

/* where value k of a column lives (k4: K rounded down to a multiple of 4) */
static inline int32_t dq_quad_pos(int32_t k, int32_t k4) {
    return k < k4 && ((k + 1) & 2) ? k ^ 3 : k;
}

/* col values at .. at + n - 1 = src[i] + offset (zeros when src is NULL) */
static inline void dq_column_put(int16_t *col, int32_t k4, int32_t at, const int8_t *src,
                                 int32_t n, int32_t offset) {
    int32_t i = 0;
    if (src == NULL) {
        for (; i < n; ++i) col[dq_quad_pos(at + i, k4)] = 0;
        return;
    }
    for (; i < n && ((at + i) & 3); ++i) col[dq_quad_pos(at + i, k4)] = (int16_t)(src[i] + offset);
    const int32_t off2 = dq_dup16(offset);
    for (; i + 4 <= n && at + i + 4 <= k4; i += 4) {        /* a whole quad: 2 SXTAB16 */
        const uint32_t x = dq_load4(src + i);
        dq_store2x16(col + at + i, dq_sxtab16(off2, x));
        dq_store2x16(col + at + i + 2, dq_sxtab16(off2, (x >> 8) | (x << 24)));
    }
    for (; i < n; ++i) col[dq_quad_pos(at + i, k4)] = (int16_t)(src[i] + offset);
}

/* s[0] += col_a . f0, s[1] += col_b . f0, s[2] += col_a . f1, s[3] += col_b . f1 over
 * K values: 2 output channels x 2 pixels, 8 SMLAD per 4 values. */
static inline void dq_dot_2x2(const int16_t *ca, const int16_t *cb, const int8_t *f0,
                              const int8_t *f1, int32_t k, int32_t *s) {
    int32_t s00 = s[0], s01 = s[1], s10 = s[2], s11 = s[3];
    for (int32_t n = k >> 2; n > 0; --n) {
        const uint32_t w0 = dq_load4(f0), w1 = dq_load4(f1);
        const int32_t a02 = dq_load2x16(ca), a13 = dq_load2x16(ca + 2);
        const int32_t b02 = dq_load2x16(cb), b13 = dq_load2x16(cb + 2);
        f0 += 4;
        f1 += 4;
        ca += 4;
        cb += 4;
        int32_t e = dq_sxtb16(w0), o = dq_sxtb16_ror8(w0);
        s00 = dq_smlad(o, a13, dq_smlad(e, a02, s00));
        s01 = dq_smlad(o, b13, dq_smlad(e, b02, s01));
        e = dq_sxtb16(w1);
        o = dq_sxtb16_ror8(w1);
        s10 = dq_smlad(o, a13, dq_smlad(e, a02, s10));
        s11 = dq_smlad(o, b13, dq_smlad(e, b02, s11));
    }
    for (int32_t t = 0; t < (k & 3); ++t) {
        s00 += ca[t] * f0[t];
        s01 += cb[t] * f0[t];
        s10 += ca[t] * f1[t];
        s11 += cb[t] * f1[t];
    }
    s[0] = s00;
    s[1] = s01;
    s[2] = s10;
    s[3] = s11;
}

/* s[0] += col . f0, s[1] += col . f1: one pixel, 2 output channels. */
static inline void dq_dot_1x2(const int16_t *c, const int8_t *f0, const int8_t *f1, int32_t k,
                              int32_t *s) {
    int32_t s0 = s[0], s1 = s[1];
    for (int32_t n = k >> 2; n > 0; --n) {
        const uint32_t w0 = dq_load4(f0), w1 = dq_load4(f1);
        const int32_t c02 = dq_load2x16(c), c13 = dq_load2x16(c + 2);
        f0 += 4;
        f1 += 4;
        c += 4;
        s0 = dq_smlad(dq_sxtb16_ror8(w0), c13, dq_smlad(dq_sxtb16(w0), c02, s0));
        s1 = dq_smlad(dq_sxtb16_ror8(w1), c13, dq_smlad(dq_sxtb16(w1), c02, s1));
    }
    for (int32_t t = 0; t < (k & 3); ++t) {
        s0 += c[t] * f0[t];
        s1 += c[t] * f1[t];
    }
    s[0] = s0;
    s[1] = s1;
}
#endif

#endif
