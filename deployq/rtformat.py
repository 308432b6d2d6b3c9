"""The C runtime's model file (runtime/dq_runtime.h is the reference): a header, fixed
records for tensors and ops, then a data section of int8/int32 constants, all
little-endian. Only writing lives here; the C loader validates what it reads."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
MODE_S8, MODE_FX = 1, 2
OPS = {name: i + 1 for i, name in enumerate(
    ["conv2d", "depthwise_conv2d", "fully_connected", "add", "max_pool", "avg_pool",
     "mean", "concat", "reshape", "transpose", "pad", "clamp", "slice",
     # 14-17: the pointwise activations (issue 15, ops-act); 18-20: structural ops
     "logistic", "tanh", "hard_swish", "leaky_relu",
     "mul", "resize_nearest", "transpose_conv"])}
MAX_INPUTS, NUM_PARAMS, NUM_DATA = 8, 24, 4
HEADER = np.dtype([("magic", "S4"), ("version", "<u4"), ("mode", "<u4"),
                   ("n_tensors", "<u4"), ("n_ops", "<u4"), ("input", "<u4"),
                   ("output", "<u4"), ("data_bytes", "<u4")])
TENSOR = np.dtype([("dims", "<i4", 3), ("zero_point", "<i4"), ("bits", "<i4"),
                   ("frac_bits", "<i4")])
OP = np.dtype([("type", "<u4"), ("n_inputs", "<u4"), ("inputs", "<u4", MAX_INPUTS),
               ("output", "<u4"), ("params", "<i4", NUM_PARAMS),
               ("data_offset", "<u4", NUM_DATA), ("data_count", "<u4", NUM_DATA)])
# params[] slots by name: runtime/dq_ops.h's dq_param_slot enum is the same table (a
# test parses it against this one); dq_ops.h documents which op reads which slot.
SLOT = {"stride_h": 0, "stride_w": 1, "pad_top": 2, "pad_left": 3, "dilation_h": 4,
        "dilation_w": 5, "groups": 6, "rounding": 7, "act_min": 8, "act_max": 9,
        "kernel_h": 10, "kernel_w": 11, "acc_bits": 12, "acc_overflow": 13,
        "out_overflow": 14, "reciprocal": 15, "reciprocal_bits": 16, "pool_division": 17,
        "guard_bits": 18, "exclude_pad": 19,
        # ADD (S8)
        "left_shift": 0, "in1_multiplier": 1, "in1_shift": 2, "in2_multiplier": 3,
        "in2_shift": 4, "out_multiplier": 5, "out_shift": 6,
        # ADD (FX)
        "common_frac_bits": 0,
        # MEAN, MUL (S8)
        "multiplier": 1, "shift": 2,
        # MUL by a constant (S8): its zero point and dims
        "const_zero_point": 3, "const_h": 4, "const_w": 5, "const_c": 6,
        # CONCAT, SLICE, TRANSPOSE, PAD
        "axis": 0, "begin": 1, "perm_0": 0, "perm_1": 1, "perm_2": 2,
        "before_h": 0, "after_h": 1, "before_w": 2, "after_w": 3, "before_c": 4,
        "after_c": 5, "pad_mode": 6,
        # HARD_SWISH (S8)
        "output_multiplier_int16": 0, "output_exponent": 1, "reluish_multiplier_int16": 2,
        "reluish_exponent": 3,
        # LEAKY_RELU (S8)
        "identity_multiplier": 1, "identity_shift": 2, "alpha_multiplier": 3,
        "alpha_shift": 4}


@dataclass
class Tensor:
    dims: tuple[int, int, int]          # H, W, C per sample
    zero_point: int = 0
    bits: int = 8
    frac_bits: int = 0


@dataclass
class Op:
    type: str
    inputs: list[int]
    output: int
    params: dict[int | str, int] = field(default_factory=dict)
    data: list[np.ndarray] = field(default_factory=list)   # up to 4 int8/int32 arrays


def pack(mode: int, tensors: list[Tensor], ops: list[Op], input: int, output: int) -> bytes:
    blobs, data_bytes = [], 0
    op_records = np.zeros(len(ops), OP)
    for rec, op in zip(op_records, ops):
        rec["type"], rec["n_inputs"], rec["output"] = OPS[op.type], len(op.inputs), op.output
        rec["inputs"][:len(op.inputs)] = op.inputs
        for key, value in op.params.items():
            rec["params"][SLOT.get(key, key)] = int(value)
        for k, arr in enumerate(op.data):
            raw = np.ascontiguousarray(arr).tobytes()
            rec["data_offset"][k], rec["data_count"][k] = data_bytes, arr.size
            padded = raw + b"\0" * (-len(raw) % 4)
            blobs.append(padded)
            data_bytes += len(padded)
    header = np.array([(b"DQRT", VERSION, mode, len(tensors), len(ops), input, output,
                        data_bytes)], HEADER)
    tensor_records = np.array([(t.dims, t.zero_point, t.bits, t.frac_bits) for t in tensors],
                              TENSOR)
    return header.tobytes() + tensor_records.tobytes() + op_records.tobytes() + b"".join(blobs)


# --- TFLite's multiplier rules, in Python (a test checks them against the C helper) --

def round_half_away(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """real = m * 2^(shift - 31), m in [2^30, 2^31): TFLite's QuantizeMultiplier."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    fixed = round_half_away(q * 2.0 ** 31)
    if fixed == 2 ** 31:
        fixed, shift = fixed // 2, shift + 1
    if shift < -31:
        return 0, 0
    return fixed, shift
