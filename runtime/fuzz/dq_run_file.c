/* Runs a model file on an input file with the C runtime: for the sanitizer tests
 * (tests/runtime/test_kernels.py builds it with -fsanitize=undefined).
 *
 *   dq_run_file model.dqm inputs.bin outputs.bin
 *
 * inputs.bin holds n samples of the model's input bytes; outputs.bin receives n
 * samples of its output bytes. Exit status: 0, or 1 with the dq_status on stderr. */
#include <stdio.h>
#include <stdlib.h>

#include "../dq_runtime.h"

static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*size ? *size : 1);        /* malloc is suitably aligned */
    if (buf && fread(buf, 1, *size, f) != *size) { free(buf); buf = NULL; }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: dq_run_file model inputs outputs\n"); return 2; }
    size_t model_size, in_size;
    uint8_t *blob = read_file(argv[1], &model_size), *in = read_file(argv[2], &in_size);
    if (!blob || !in) { fprintf(stderr, "cannot read the model or the inputs\n"); return 2; }
    dq_model model;
    dq_status s = dq_model_init(&model, blob, model_size);
    if (s != DQ_OK) { fprintf(stderr, "%s\n", dq_status_name(s)); return 1; }
    const size_t in_bytes = dq_tensor_bytes(&model, model.header.input);
    const size_t out_bytes = dq_tensor_bytes(&model, model.header.output);
    const int32_t n = (int32_t)(in_size / in_bytes);
    uint8_t *arena = malloc(dq_arena_bytes(&model) + 1);
    int8_t *out = malloc(n * out_bytes + 1);
    s = dq_invoke(&model, arena, (const int8_t *)in, out, n);
    if (s != DQ_OK) { fprintf(stderr, "%s\n", dq_status_name(s)); return 1; }
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(out, 1, n * out_bytes, f) != n * out_bytes) return 2;
    fclose(f);
    free(arena);
    free(out);
    free(blob);
    free(in);
    return 0;
}
