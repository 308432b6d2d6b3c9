/* deployq_model.c: the exported model, embedded in flash, behind two calls. */
#include "deployq_model.h"

#include "model_data.h"

dq_status deployq_model_init(dq_model *model) {
    const dq_status s = dq_model_init(model, dq_model_data.bytes, DQ_MODEL_DATA_BYTES);
    if (s != DQ_OK) return s;
    /* the arena size was computed at export; a different runtime could plan another */
    return dq_arena_bytes(model) <= DEPLOYQ_ARENA_BYTES ? DQ_OK : DQ_ERR_LIMITS;
}

dq_status deployq_model_invoke(const dq_model *model, uint8_t *arena, const int8_t *input,
                               int8_t *output, int32_t n) {
    return dq_invoke(model, arena, input, output, n);
}
