/* The multiplier rule of the MCU mode (dq_runtime.h), for Python's bit-equality check.
 * Not in the inference path: it uses double math, so the microcontroller build
 * (deployq.cproject) leaves this file out. */
#include <math.h>

#include "dq_runtime.h"

/* TFLite's QuantizeMultiplier: frexp, round(q * 2^31) half away from zero. */
void dq_quantize_multiplier(double real, int32_t *m, int32_t *shift) {
    if (real == 0.0) { *m = 0; *shift = 0; return; }
    int e;
    const double q = frexp(real, &e);
    int64_t fixed = (int64_t)round(q * (double)(1LL << 31));
    if (fixed == (1LL << 31)) { fixed /= 2; ++e; }
    if (e < -31) { e = 0; fixed = 0; }
    *m = (int32_t)fixed;
    *shift = e;
}
