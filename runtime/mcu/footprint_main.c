/* footprint_main.c: the smallest firmware that loads and runs the model, for a
 * realistic flash and RAM figure (arm-none-eabi-size on deployq_footprint.elf).
 * In a product, main would read a sensor into input and act on output. */
#include "deployq_model.h"

static dq_model model;
static uint32_t arena[(DEPLOYQ_ARENA_BYTES + 3) / 4];
static int8_t input[DEPLOYQ_INPUT_BYTES];
volatile int8_t deployq_result[DEPLOYQ_OUTPUT_BYTES];

int main(void) {
    static int8_t output[DEPLOYQ_OUTPUT_BYTES];
    if (deployq_model_init(&model) != DQ_OK) return 1;
    if (deployq_model_invoke(&model, (uint8_t *)arena, input, output, 1) != DQ_OK) return 1;
    for (int i = 0; i < DEPLOYQ_OUTPUT_BYTES; ++i) deployq_result[i] = output[i];
    return 0;
}
