/* board.c: timer and stack measurement on the MPS2-AN386 (see board.h). */
#include "board.h"

#define TIMER0_CTRL (*(volatile uint32_t *)0x40000000u)
#define TIMER0_VALUE (*(volatile uint32_t *)0x40000004u)
#define TIMER0_RELOAD (*(volatile uint32_t *)0x40000008u)
#define PAINT 0xA5A5A5A5u

extern uint32_t __stack_limit;
static uint32_t *paint_top, *paint_sp;

void dq_board_timer_start(void) {
    TIMER0_CTRL = 0;
    TIMER0_RELOAD = 0xFFFFFFFFu;
    TIMER0_VALUE = 0xFFFFFFFFu;
    TIMER0_CTRL = 1;
}

uint32_t dq_board_timer_ticks(void) { return 0xFFFFFFFFu - TIMER0_VALUE; }

void dq_board_stack_paint(void) {
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    paint_sp = sp;
    paint_top = sp - 16;                 /* 64 bytes for this function's own frame */
    for (volatile uint32_t *p = &__stack_limit; p < paint_top; ++p) *p = PAINT;
}

uint32_t dq_board_stack_used(void) {
    const uint32_t *p = &__stack_limit;
    while (p < paint_top && *p == PAINT) ++p;
    return (uint32_t)((uintptr_t)paint_sp - (uintptr_t)p);
}
