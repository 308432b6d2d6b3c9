/* Per-op timing on the host (C99 clock(): processor time). Not compiled into the
 * microcontroller project (deployq/cproject.py HOST_ONLY), whose cost is counted in
 * instructions under QEMU instead. */
#include <time.h>

#include "dq_ops.h"

dq_status dq_invoke_profile(const dq_model *m, uint8_t *arena, const int8_t *input,
                            int32_t runs, int64_t *ticks) {
    if (!m || !arena || !input || !ticks || runs < 1) return DQ_ERR_ARG;
    for (uint32_t i = 0; i < m->header.n_ops; ++i) ticks[i] = 0;
    for (int32_t r = 0; r < runs; ++r) {
        dq_set_input(m, arena, input);
        for (uint32_t i = 0; i < m->header.n_ops; ++i) {
            const clock_t t0 = clock();
            const dq_status s = dq_run_op(m, i, arena, r == 0);
            ticks[i] += (int64_t)(clock() - t0);
            if (s != DQ_OK) return s;
        }
    }
    return DQ_OK;
}

int64_t dq_clocks_per_sec(void) { return (int64_t)CLOCKS_PER_SEC; }
