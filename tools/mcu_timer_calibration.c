/* The QEMU instruction count check of docs/mcu.md: a loop of 2 instructions per
 * iteration (subs; bne) between two reads of the board timer; with -icount shift=0
 * one tick is 40 instructions, so N iterations must read N / 20 ticks. Built and run
 * by tools/bench_mcu.py --calibrate against a C project's board/ files. */
#include "board.h"
#include "semihost.h"

static char line[64];

static char *put_dec(char *p, unsigned v) {
    char b[12];
    int n = 0;
    do { b[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *p++ = b[--n];
    return p;
}

static void print_pair(const char *key, unsigned a, unsigned b) {
    char *p = line;
    while (*key) *p++ = *key++;
    p = put_dec(p, a);
    *p++ = ' ';
    p = put_dec(p, b);
    *p++ = '\n';
    *p = 0;
    dq_sh_write0(line);
}

/* n iterations of 2 instructions */
static void loop(unsigned n) { __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) :: "cc"); }

int main(void) {
    static const unsigned iterations[] = {1000, 10000, 100000, 1000000, 10000000};
    for (unsigned i = 0; i < sizeof iterations / sizeof iterations[0]; ++i) {
        dq_board_timer_start();
        loop(iterations[i]);
        print_pair("", iterations[i], dq_board_timer_ticks());
    }
    dq_board_timer_start();
    print_pair("empty ", 0, dq_board_timer_ticks());
    return 0;
}
