/* startup.c: vector table and reset handler for a Cortex-M4 (MPS2-AN386 under QEMU).
 * Reset copies .data from flash, zeroes .bss, calls main and reports its result through
 * semihosting; a fault exits with failure instead of hanging. No FPU is enabled: the
 * code is built with -mfloat-abi=soft and the inference path uses no floating point. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
int main(void);

void Reset_Handler(void) {
    const uint32_t *src = &__data_load;
    for (uint32_t *dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
    for (uint32_t *dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;
    dq_sh_exit(main() == 0);
}

static void Fault_Handler(void) {
    dq_sh_write0("deployq: processor fault\n");
    dq_sh_exit(0);
}

typedef void (*dq_vector)(void);

__attribute__((section(".isr_vector"), used))
const dq_vector dq_vector_table[16] = {
    (dq_vector)(uintptr_t)&__stack_top, Reset_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,   /* NMI..Usage */
    0, 0, 0, 0,
    Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler,   /* SVC..SysTick */
};
