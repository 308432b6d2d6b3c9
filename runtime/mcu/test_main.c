/* test_main.c: runs the embedded test inputs, prints one line per sample
 *     y <index> <outputs as two hex digits each> <timer ticks> <stack bytes>
 * then "stack <max bytes>" and "ok <count>" (or "mismatch <count>") against the
 * outputs the host C runtime computed at export. Exits with failure on a mismatch. */
#include <string.h>

#include "board.h"
#include "deployq_model.h"
#include "semihost.h"
#include "test_vectors.h"

static dq_model model;
static uint32_t arena[(DEPLOYQ_ARENA_BYTES + 3) / 4];
static int8_t output[DEPLOYQ_OUTPUT_BYTES];
static char line[DEPLOYQ_OUTPUT_BYTES * 2 + 64];

static char *put_dec(char *p, uint32_t v) {
    char digits[10];
    int n = 0;
    do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *p++ = digits[--n];
    return p;
}

static char *put_hex(char *p, const int8_t *v, int n) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < n; ++i) {
        *p++ = hex[(uint8_t)v[i] >> 4];
        *p++ = hex[(uint8_t)v[i] & 15];
    }
    return p;
}

static void print_pair(const char *key, uint32_t value) {
    char *p = line;
    while (*key) *p++ = *key++;
    p = put_dec(p, value);
    *p++ = '\n';
    *p = 0;
    dq_sh_write0(line);
}

int main(void) {
    dq_status s = deployq_model_init(&model);
    if (s != DQ_OK) {
        dq_sh_write0("deployq: model init failed: ");
        dq_sh_write0(dq_status_name(s));
        dq_sh_write0("\n");
        return 1;
    }
    uint32_t bad = 0, stack_max = 0;
    for (uint32_t i = 0; i < DQ_TEST_COUNT; ++i) {
        dq_board_stack_paint();
        dq_board_timer_start();
        s = deployq_model_invoke(&model, (uint8_t *)arena, dq_test_inputs[i], output, 1);
        const uint32_t ticks = dq_board_timer_ticks();
        const uint32_t stack = dq_board_stack_used();
        if (s != DQ_OK) { dq_sh_write0("deployq: invoke failed\n"); return 1; }
        stack_max = stack > stack_max ? stack : stack_max;
        bad += memcmp(output, dq_test_expected[i], DEPLOYQ_OUTPUT_BYTES) != 0;
        char *p = line;
        *p++ = 'y';
        *p++ = ' ';
        p = put_dec(p, i);
        *p++ = ' ';
        p = put_hex(p, output, DEPLOYQ_OUTPUT_BYTES);
        *p++ = ' ';
        p = put_dec(p, ticks);
        *p++ = ' ';
        p = put_dec(p, stack);
        *p++ = '\n';
        *p = 0;
        dq_sh_write0(line);
    }
    dq_board_timer_start();
    print_pair("timer_overhead ", dq_board_timer_ticks());
    print_pair("stack ", stack_max);
    print_pair(bad ? "mismatch " : "ok ", bad ? bad : DQ_TEST_COUNT);
    return bad != 0;
}
