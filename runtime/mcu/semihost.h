/* semihost.h: the few Arm semihosting calls the test programs use (BKPT 0xAB on
 * Armv7-M). Under QEMU they need -semihosting; on a board, a debugger serving them. */
#ifndef DQ_SEMIHOST_H
#define DQ_SEMIHOST_H

#include <stdint.h>

enum { DQ_SH_MODE_RB = 1, DQ_SH_MODE_WB = 5 };   /* fopen "rb", "wb" */

int32_t dq_sh_open(const char *path, int32_t mode);       /* a handle, or -1 */
uint32_t dq_sh_read(int32_t fd, void *buf, uint32_t n);   /* bytes NOT read */
uint32_t dq_sh_write(int32_t fd, const void *buf, uint32_t n);   /* bytes NOT written */
void dq_sh_close(int32_t fd);
void dq_sh_write0(const char *text);                      /* to the host console */
void dq_sh_exit(int ok) __attribute__((noreturn));        /* QEMU exits with 0 or 1 */

#endif
