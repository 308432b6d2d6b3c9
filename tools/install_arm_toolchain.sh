#!/bin/sh
# The Arm cross compiler, newlib and the emulator that the mcu-qemu target and
# tests/runtime/test_qemu.py need (Debian/Ubuntu; about a minute and 400 MB).
set -eu
apt-get update
apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm make
