/* board.h: what the test programs need from the MPS2-AN386 board: a cycle-free time
 * source and a stack high-water mark.
 *
 * The timer is CMSDK APB timer 0 (0x40000000), a 32-bit down-counter at the 25 MHz
 * peripheral clock. QEMU runs it on virtual time; with -icount shift=0 every
 * instruction advances virtual time by 1 ns, so one tick is 40 instructions. */
#ifndef DQ_BOARD_H
#define DQ_BOARD_H

#include <stdint.h>

#define DQ_BOARD_TIMER_HZ 25000000u

void dq_board_timer_start(void);
uint32_t dq_board_timer_ticks(void);      /* ticks since dq_board_timer_start */

/* Fill the free stack below the caller with a pattern; dq_board_stack_used then gives
 * how deep the stack went since (within about 64 bytes). */
void dq_board_stack_paint(void);
uint32_t dq_board_stack_used(void);

#endif
