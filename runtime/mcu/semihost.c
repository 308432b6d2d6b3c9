/* semihost.c: Arm semihosting calls (operation in r0, argument block in r1). */
#include "semihost.h"

#include <string.h>

enum { SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05,
       SYS_READ = 0x06, SYS_EXIT = 0x18 };
enum { ADP_APPLICATION_EXIT = 0x20026, ADP_RUNTIME_ERROR = 0x20023 };

static uint32_t call(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int32_t dq_sh_open(const char *path, int32_t mode) {
    const uint32_t args[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, strlen(path)};
    return (int32_t)call(SYS_OPEN, args);
}

uint32_t dq_sh_read(int32_t fd, void *buf, uint32_t n) {
    const uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, n};
    return call(SYS_READ, args);
}

uint32_t dq_sh_write(int32_t fd, const void *buf, uint32_t n) {
    const uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, n};
    return call(SYS_WRITE, args);
}

void dq_sh_close(int32_t fd) {
    const uint32_t args[1] = {(uint32_t)fd};
    call(SYS_CLOSE, args);
}

void dq_sh_write0(const char *text) { call(SYS_WRITE0, text); }

void dq_sh_exit(int ok) {
    /* AArch32 SYS_EXIT takes the reason itself in r1, not a pointer to it */
    call(SYS_EXIT, (const void *)(uintptr_t)(ok ? ADP_APPLICATION_EXIT : ADP_RUNTIME_ERROR));
    for (;;) {}
}

/* newlib's assert handler, for builds without NDEBUG: report and fail. */
void __assert_func(const char *file, int line, const char *func, const char *expr);
void __assert_func(const char *file, int line, const char *func, const char *expr) {
    (void)line;
    (void)func;
    dq_sh_write0("deployq: assertion failed: ");
    dq_sh_write0(expr);
    dq_sh_write0(" in ");
    dq_sh_write0(file);
    dq_sh_write0("\n");
    dq_sh_exit(0);
}
