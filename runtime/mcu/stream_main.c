/* stream_main.c: the emulated device as a batch runner. Reads int8 samples from the
 * host file in.bin (semihosting, relative to QEMU's working directory), runs each,
 * and appends its int8 outputs to out.bin. in.bin and out.bin may be named pipes (a
 * persistent session, deployq/qemustream.py): a read may then return part of a
 * sample, so each sample is read until complete; end of file ends the run. */
#include "deployq_model.h"
#include "semihost.h"

static dq_model model;
static uint32_t arena[(DEPLOYQ_ARENA_BYTES + 3) / 4];
static int8_t input[DEPLOYQ_INPUT_BYTES], output[DEPLOYQ_OUTPUT_BYTES];

/* 0: a whole sample read; 1: end of file before its first byte; -1: a partial sample
 * then end of file (or a read error). SYS_READ returns the bytes NOT read. */
static int read_sample(int32_t fd) {
    uint32_t got = 0;
    while (got < DEPLOYQ_INPUT_BYTES) {
        const uint32_t want = DEPLOYQ_INPUT_BYTES - got;
        const uint32_t left = dq_sh_read(fd, (uint8_t *)input + got, want);
        if (left >= want) return got == 0 && left == want ? 1 : -1;
        got += want - left;
    }
    return 0;
}

int main(void) {
    if (deployq_model_init(&model) != DQ_OK) {
        dq_sh_write0("deployq: model init failed\n");
        return 1;
    }
    const int32_t in = dq_sh_open("in.bin", DQ_SH_MODE_RB);
    const int32_t out = dq_sh_open("out.bin", DQ_SH_MODE_WB);
    if (in < 0 || out < 0) {
        dq_sh_write0("deployq: cannot open in.bin or out.bin\n");
        return 1;
    }
    int status;
    while ((status = read_sample(in)) == 0) {
        if (deployq_model_invoke(&model, (uint8_t *)arena, input, output, 1) != DQ_OK) return 1;
        if (dq_sh_write(out, output, DEPLOYQ_OUTPUT_BYTES) != 0) return 1;
    }
    dq_sh_close(in);
    dq_sh_close(out);
    if (status < 0) dq_sh_write0("deployq: in.bin ends inside a sample\n");
    return status < 0;
}
