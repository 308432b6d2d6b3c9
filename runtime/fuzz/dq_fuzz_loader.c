/* libFuzzer harness for the model loader: any bytes must give a status, never a
 * crash; a model that loads must also run (its kernels then read only what the loader
 * checked). Build: clang -fsanitize=fuzzer,address,undefined (tools/fuzz_runtime.py). */
#include <stdlib.h>
#include <string.h>

#include "../dq_runtime.h"

#define MAX_ARENA (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);          /* malloc is suitably aligned */
    if (!buf) return 0;
    memcpy(buf, data, size);
    dq_model model;
    if (dq_model_init(&model, buf, size) == DQ_OK && dq_arena_bytes(&model) <= MAX_ARENA) {
        uint8_t *arena = calloc(dq_arena_bytes(&model) + 1, 1);
        size_t in_bytes = dq_tensor_bytes(&model, model.header.input);
        size_t out_bytes = dq_tensor_bytes(&model, model.header.output);
        int8_t *in = calloc(in_bytes + 1, 1), *out = calloc(out_bytes + 1, 1);
        for (size_t i = 0; i < in_bytes; ++i) in[i] = (int8_t)(size ? data[i % size] : 0);
        if (arena && in && out) dq_invoke(&model, arena, in, out, 1);
        free(arena);
        free(in);
        free(out);
    }
    free(buf);
    return 0;
}
