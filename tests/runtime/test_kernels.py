"""The C runtime's kernel seam: one table of op codes, slots and status names shared by
C and Python; the optimized kernel set bit-identical with the reference set on every
tensor; the ADD overflow regression under UndefinedBehaviorSanitizer."""
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deployq import api, graph as G, rtformat as F, runtime

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {name: (runtime.SOURCES / name).read_text() for name in ("dq_runtime.h", "dq_ops.h")}


# --- one source of truth for codes, slots and names --------------------------------

def _enum(text: str, name: str) -> dict[str, int]:
    """The members of `typedef enum {...} name;` with their values (C's implicit +1)."""
    body = re.search(r"typedef enum \{([^{}]*)\}\s*" + name + ";", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    members, value = {}, -1
    for item in filter(None, (i.strip() for i in body.split(","))):
        key, _, explicit = item.partition("=")
        value = int(explicit) if explicit.strip() else value + 1
        members[key.strip()] = value
    return members


def _define(name: str) -> int:
    return int(re.search(rf"#define {name} (\d+)", HEADERS["dq_runtime.h"]).group(1))


def test_c_op_codes_and_format_constants_match_rtformat():
    ops = _enum(HEADERS["dq_runtime.h"], "dq_op_type")
    assert {k: v for k, v in ops.items() if k != "DQ_OP_COUNT"} == \
        {f"DQ_OP_{name.upper()}": code for name, code in F.OPS.items()}
    assert _enum(HEADERS["dq_runtime.h"], "dq_mode") == {"DQ_MODE_S8": F.MODE_S8,
                                                          "DQ_MODE_FX": F.MODE_FX}
    assert (_define("DQ_FORMAT_VERSION"), _define("DQ_MAX_INPUTS"), _define("DQ_NUM_PARAMS"),
            _define("DQ_NUM_DATA")) == (F.VERSION, F.MAX_INPUTS, F.NUM_PARAMS, F.NUM_DATA)


def test_c_parameter_slots_match_rtformat():
    slots = _enum(HEADERS["dq_ops.h"], "dq_param_slot")
    assert slots == {f"DQ_P_{name.upper()}": i for name, i in F.SLOT.items()}


def test_status_names_come_from_the_c_library():
    statuses = _enum(HEADERS["dq_runtime.h"], "dq_status")
    assert len(statuses) == 12
    for name, code in statuses.items():
        assert runtime.status_name(code) == name
    assert runtime.status_name(len(statuses)) == "DQ_ERR_UNKNOWN"


# --- models at the level of the runtime format --------------------------------------

def _requant_data(rng, mode: int, channels: int) -> tuple[list, dict]:
    bias = rng.integers(-(1 << 14), 1 << 14, channels).astype(np.int32)
    if mode == F.MODE_S8:
        mult = rng.integers(1 << 30, (1 << 31) - 1, channels).astype(np.int32)
        mult[rng.random(channels) < 0.05] = 0
        shift = rng.integers(-18, 5, channels).astype(np.int32)     # > 0: wraps in int32
        lo = int(rng.integers(-128, 0))
        return [bias, mult, shift], {"rounding": int(rng.integers(0, 2)), "act_min": lo,
                                     "act_max": int(rng.integers(lo, 128))}
    shift = rng.integers(-4, 14, channels).astype(np.int32)
    return [bias, np.zeros(channels, np.int32), shift], {
        "rounding": int(rng.integers(0, 3)), "act_min": -128, "act_max": 127,
        "acc_bits": int(rng.choice([12, 16, 24, 32])), "acc_overflow": int(rng.integers(0, 2)),
        "out_overflow": int(rng.integers(0, 2))}


def _tensor(rng, mode: int, dims) -> F.Tensor:
    if mode == F.MODE_S8:
        return F.Tensor(tuple(dims), int(rng.integers(-128, 128)))
    return F.Tensor(tuple(dims), 0, 8, int(rng.integers(-4, 8)))


def _window(rng, h: int, w: int, corner: bool) -> tuple[dict, tuple[int, int]]:
    """Kernel, stride, dilation and padding (up to wider than the kernel); the output
    size of an unpadded-at-the-end convolution, at least 1."""
    k = [int(rng.choice([1, 2, 3, 5])) for _ in range(2)]
    s = [int(rng.choice([1, 2, 3])) for _ in range(2)]
    d = [int(rng.choice([1, 1, 2])) for _ in range(2)]
    pad = [int(rng.integers(0, k[i] + 3 if corner else k[i] // 2 + 1)) for i in range(2)]
    out = [max(1, (size + 2 * pad[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1)
           for i, size in enumerate((h, w))]
    return {"stride_h": s[0], "stride_w": s[1], "pad_top": pad[0], "pad_left": pad[1],
            "dilation_h": d[0], "dilation_w": d[1], "kernel_h": k[0], "kernel_w": k[1]}, out


def random_window_model(seed: int, mode: int, kind: str) -> bytes:
    """One conv2d, depthwise_conv2d or fully_connected op on random shapes: 1x1 images,
    channel counts that are not multiples of a SIMD width, padding wider than the
    kernel, groups, dilation, random zero points, multipliers, shifts and modes."""
    rng = np.random.default_rng(seed)
    corner = seed % 2 == 0
    h, w = (int(v) for v in (rng.integers(1, 3, 2) if corner else rng.integers(1, 14, 2)))
    c = int(rng.choice([1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 64]))
    params, (oh, ow) = _window(rng, h, w, corner)
    if kind == "add":
        assert mode == F.MODE_S8, "random ADD models are int8 only"
        return _add_model(rng, (h, w, c))
    if kind == "mul":
        assert mode == F.MODE_S8, "random MUL models are int8 only"
        return mul_model(rng, (h, w, c))
    if kind in ACTIVATIONS:
        assert mode == F.MODE_S8, "HARD_SWISH and LEAKY_RELU models here are int8 only"
        return activation_model(rng, kind, (h, w, c))
    if kind in ("max_pool", "avg_pool"):
        params |= {"dilation_h": 1, "dilation_w": 1}
        t = _tensor(rng, mode, (h, w, c))
        lo = int(rng.integers(-128, 0)) if mode == F.MODE_S8 else -128
        act = {"act_min": lo, "act_max": int(rng.integers(lo, 128)) if mode == F.MODE_S8 else 127}
        out = F.Tensor((oh, ow, c), t.zero_point, t.bits, t.frac_bits)
        return F.pack(mode, [t, out], [F.Op(kind, [0], 1, params | act)], 0, 1)
    if kind == "fully_connected":
        n_out = int(rng.integers(1, 40))
        data, q = _requant_data(rng, mode, n_out)
        filt = rng.integers(-128, 128, n_out * h * w * c).astype(np.int8)
        tensors = [_tensor(rng, mode, (h, w, c)), _tensor(rng, mode, (1, 1, n_out))]
        return F.pack(mode, tensors, [F.Op(kind, [0], 1, q, [filt, *data])], 0, 1)
    if kind == "depthwise_conv2d":
        groups = int(rng.choice([1, 1, 2, 3]))
        oc = c * groups
        filt = rng.integers(-128, 128, params["kernel_h"] * params["kernel_w"] * oc)
    else:
        groups = int(rng.choice([g for g in (1, 1, 2, 3, c) if c % g == 0]))
        oc = groups * int(rng.choice([1, 2, 3, 5, 8, 13]))
        filt = rng.integers(-128, 128, oc * params["kernel_h"] * params["kernel_w"] * (c // groups))
    data, q = _requant_data(rng, mode, oc)
    tensors = [_tensor(rng, mode, (h, w, c)), _tensor(rng, mode, (oh, ow, oc))]
    op = F.Op(kind, [0], 1, params | q | {"groups": groups}, [filt.astype(np.int8), *data])
    return F.pack(mode, tensors, [op], 0, 1)


def _add_model(rng, dims) -> bytes:
    """ADD of a tensor and a clamped copy of it (other values, same zero point)."""
    t = F.Tensor(tuple(dims), int(rng.integers(-128, 128)))
    lo = int(rng.integers(-128, 0))
    clamp = F.Op("clamp", [0], 1, {"act_min": lo, "act_max": int(rng.integers(lo, 128))})
    mult = [int(rng.integers(1 << 30, 1 << 31)) for _ in range(3)]
    p = {"left_shift": int(rng.choice([0, 7, 20])), "in1_multiplier": mult[0],
         "in1_shift": int(rng.integers(-12, 1)), "in2_multiplier": mult[1],
         "in2_shift": int(rng.integers(-12, 1)), "out_multiplier": mult[2],
         "out_shift": int(rng.integers(-31, 31)), "rounding": int(rng.integers(0, 2)),
         "act_min": -128, "act_max": int(rng.integers(0, 128))}
    out = F.Tensor(tuple(dims), int(rng.integers(-128, 128)))
    return F.pack(F.MODE_S8, [t, F.Tensor(tuple(dims), t.zero_point), out],
                  [clamp, F.Op("add", [0, 1], 2, p)], 0, 2)


ACTIVATIONS = ("hard_swish", "leaky_relu")


def _pick(rng, extremes: list[int], lo: int, hi: int) -> int:
    """An extreme value (a range end, 0, 1) one time in three, else uniform in [lo, hi]."""
    return int(rng.choice(extremes)) if rng.random() < 1 / 3 else int(rng.integers(lo, hi + 1))


def _exporter_params(rng, kind: str) -> dict:
    """The parameters the MCU exporter derives (backends/mcu.py) from random scales:
    output codes spread over the range rather than saturated."""
    from deployq.backends.mcu import _int16_multiplier
    s_in = 2.0 ** rng.uniform(-9, -1)
    s_out = s_in * 2.0 ** rng.uniform(-1.5, 1.5)
    if kind == "hard_swish":
        hires = s_in / 128.0
        out_m, out_e = _int16_multiplier(hires / s_out)
        relu_m, relu_e = _int16_multiplier(hires / (3.0 / 32768.0))
        return {"output_multiplier_int16": out_m, "output_exponent": out_e,
                "reluish_multiplier_int16": relu_m, "reluish_exponent": relu_e}
    ident = F.quantize_multiplier(s_in / s_out)
    alpha = F.quantize_multiplier(s_in * rng.uniform(0.01, 0.5) / s_out)
    return {"identity_multiplier": ident[0], "identity_shift": ident[1],
            "alpha_multiplier": alpha[0], "alpha_shift": alpha[1],
            "rounding": int(rng.integers(0, 2)), "act_min": -128, "act_max": 127}


def activation_params(rng, kind: str) -> dict:
    """HARD_SWISH or LEAKY_RELU parameters: half the time as the exporter derives them
    from random scales, else anywhere dq_validate.c accepts, extremes included (a zero
    multiplier, the largest ones, the shortest and longest shifts)."""
    if rng.random() < 0.5:
        return _exporter_params(rng, kind)
    if kind == "hard_swish":
        m16 = [0, 1, 16384, 32767]
        return {"output_multiplier_int16": _pick(rng, m16, 0, 32767),
                "output_exponent": _pick(rng, [-15, 0], -15, 0),
                "reluish_multiplier_int16": _pick(rng, m16, 0, 32767),
                "reluish_exponent": _pick(rng, [-15, 0, 1, 30], -15, 30)}
    m32 = [0, 1, 1 << 30, 2 ** 31 - 1]
    lo = int(rng.integers(-128, 0))
    return {"identity_multiplier": _pick(rng, m32, 1 << 30, 2 ** 31 - 1),
            "identity_shift": _pick(rng, [-31, 0, 30], -12, 4),
            "alpha_multiplier": _pick(rng, m32, 0, 2 ** 31 - 1),
            "alpha_shift": _pick(rng, [-31, 0, 30], -12, 4),
            "rounding": int(rng.integers(0, 2)), "act_min": lo,
            "act_max": int(rng.integers(lo, 128))}


def activation_model(rng, kind: str, dims) -> bytes:
    """One HARD_SWISH or LEAKY_RELU op with random zero points and parameters."""
    tensors = [F.Tensor(tuple(dims), int(rng.integers(-128, 128))),
               F.Tensor(tuple(dims), int(rng.integers(-128, 128)))]
    return F.pack(F.MODE_S8, tensors, [F.Op(kind, [0], 1, activation_params(rng, kind))], 0, 1)


def mul_model(rng, dims) -> bytes:
    """MUL of a tensor by a constant (1 input) or by a clamped copy of itself (2 inputs);
    the constant broadcasts along any of H, W, C (a 1 x 1 x C gate as in squeeze-
    excitation, a channel broadcast the optimized kernel leaves to the reference)."""
    t = F.Tensor(tuple(dims), int(rng.integers(-128, 128)))
    lo = int(rng.integers(-128, 0))
    p = {"multiplier": int(rng.integers(1 << 30, 2 ** 31)), "shift": int(rng.integers(-12, -6)),
         "rounding": int(rng.integers(0, 2)), "act_min": -128, "act_max": 127}
    if rng.random() < 0.5:         # else outputs spread over the codes, not saturated
        p |= {"multiplier": _pick(rng, [0, 1 << 30, 2 ** 31 - 1], 1 << 30, 2 ** 31 - 1),
              "shift": _pick(rng, [-31, 0, 30], -11, -5), "act_min": lo,
              "act_max": int(rng.integers(lo, 128))}
    out = F.Tensor(tuple(dims), int(rng.integers(-128, 128)))
    if rng.random() < 0.5:
        cdims = [d if rng.random() < 0.5 else 1 for d in dims]
        const = rng.integers(-128, 128, int(np.prod(cdims))).astype(np.int8)
        p |= {"const_zero_point": int(rng.integers(-128, 128)), "const_h": cdims[0],
              "const_w": cdims[1], "const_c": cdims[2]}
        return F.pack(F.MODE_S8, [t, out], [F.Op("mul", [0], 1, p, [const])], 0, 1)
    clamp = F.Op("clamp", [0], 1, {"act_min": lo, "act_max": int(rng.integers(lo, 128))})
    order = [0, 1] if rng.random() < 0.5 else [1, 0]
    return F.pack(F.MODE_S8, [t, F.Tensor(tuple(dims), t.zero_point), out],
                  [clamp, F.Op("mul", order, 2, p)], 0, 2)


# --- comparing two builds -----------------------------------------------------------

def _inputs(n_in: int, seed: int, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.integers(-128, 128, (n, n_in), dtype=np.int8)
    rows[0], rows[1] = -128, 127                       # the extremes
    return rows


def differences(blob: bytes, lib_a, lib_b, seed: int = 0, n: int = 6) -> list[str]:
    """Where two builds disagree: every tensor of each sample (dq_invoke_dump), and the
    outputs of all samples in one dq_invoke call (kernels keep prepared scratch data
    from the first sample of a call to the next ones)."""
    a, b = runtime.Model(blob, lib=lib_a), runtime.Model(blob, lib=lib_b)
    rows = _inputs(a.tensor_bytes[a.input_index], seed, n)
    found = [f"tensor {t}, sample {k}" for k, row in enumerate(rows)
             for t, (x, y) in enumerate(zip(a.dump(row), b.dump(row))) if not np.array_equal(x, y)]
    if not np.array_equal(a.run(rows), b.run(rows)):
        found.append("outputs of one batch call")
    return found


@pytest.fixture(scope="module")
def libs():
    return runtime.library("ref"), runtime.library("opt")


@pytest.fixture(scope="module")
def portable_opt(tmp_path_factory):
    """The optimized set without SIMD (its portable C paths), as on a machine or a
    compiler without AVX2."""
    out = tmp_path_factory.mktemp("portable") / "libdq-opt-portable.so"
    return runtime.load_library(runtime.build("opt", ["-mno-avx2", "-mno-avx"], out=out))


def test_the_two_builds_are_the_two_sets(libs):
    ref, opt = libs
    assert (ref.dq_kernels_name(), opt.dq_kernels_name()) == (b"ref", b"opt")
    with pytest.raises(Exception, match="unknown C kernel set 'fast'"):
        runtime.build("fast")


KINDS = ["conv2d", "depthwise_conv2d", "fully_connected", "max_pool", "avg_pool", "add",
         "mul", *ACTIVATIONS]
S8_ONLY = ("add", "mul", *ACTIVATIONS)


@pytest.mark.parametrize("mode, kind", [(F.MODE_S8, k) for k in KINDS] +
                         [(F.MODE_FX, k) for k in KINDS if k not in S8_ONLY])
def test_optimized_set_bit_identical_on_random_ops_and_corner_shapes(libs, mode, kind):
    for seed in range(24):
        blob = random_window_model(seed, mode, kind)
        assert not differences(blob, *libs, seed), (seed, kind, mode)


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                    reason="-mno-avx2 is an x86 flag")
@pytest.mark.parametrize("kind", KINDS)
def test_portable_optimized_set_bit_identical(libs, portable_opt, kind):
    assert portable_opt.dq_kernels_name() == b"opt"
    for seed in range(12):
        blob = random_window_model(seed, F.MODE_S8, kind)
        assert not differences(blob, libs[0], portable_opt, seed), (seed, kind)



# --- the Cortex-M DSP kernels (runtime/dq_arm_dsp.h) built for the host ---------------

DSP_KINDS = ["conv2d", "depthwise_conv2d", "fully_connected", "max_pool"]


@pytest.fixture(scope="module")
def dsp_twin():
    """The optimized set's Cortex-M kernels in portable C (-DDQ_DSP_PORTABLE): the
    algorithm tests/runtime/test_qemu.py runs on the emulated Cortex-M4."""
    return runtime.library(runtime.DSP_TWIN)


@pytest.mark.parametrize("kind", DSP_KINDS)
def test_cortex_m_kernels_bit_identical_on_random_ops_and_corner_shapes(libs, dsp_twin, kind):
    assert dsp_twin.dq_kernels_name() == b"opt"
    for seed in range(24):
        blob = random_window_model(seed, F.MODE_S8, kind)
        assert not differences(blob, libs[0], dsp_twin, seed), (seed, kind)


@pytest.mark.parametrize("old, new, kind", [
    ("? k ^ 3 : k;", "? k : k;", "conv2d"),          # im2col leaves the natural order
    ("dq_smlad(dq_sxtb16(w0), c02, s0)", "dq_smlad(dq_sxtb16(w0), c13, s0)",
     "fully_connected")])                            # a dot pairs the wrong halves
def test_a_wrong_cortex_m_kernel_is_caught(libs, tmp_path, old, new, kind):
    """Negative control: a quad-order mistake in the DSP kernels must be found by the
    comparison above."""
    bad = mutated_library(tmp_path, "dq_arm_dsp.h", old, new, runtime.DSP_TWIN)
    assert any(differences(random_window_model(seed, F.MODE_S8, kind), libs[0], bad, seed)
               for seed in range(12)), kind

# --- HARD_SWISH and LEAKY_RELU as a table (dq_activation_opt.c) ---------------------

EVERY_CODE_ROWS = np.stack([np.random.default_rng(k).permutation(np.arange(-128, 128, dtype=np.int8))
                            for k in range(4)])       # every code in every sample


def activation_differences(kind: str, lib_a, lib_b, seeds=range(40)) -> list[int]:
    """Seeds of random one-op models (256 elements) on which two builds disagree for
    some input code: each sample holds all 256 codes, in a different order, and the
    samples after the first read the table the first one built."""
    found = []
    for seed in seeds:
        blob = activation_model(np.random.default_rng(seed), kind, (1, 1, 256))
        a, b = runtime.Model(blob, lib=lib_a), runtime.Model(blob, lib=lib_b)
        if not np.array_equal(a.run(EVERY_CODE_ROWS), b.run(EVERY_CODE_ROWS)) or \
                not np.array_equal(a.dump(EVERY_CODE_ROWS[1])[1], b.dump(EVERY_CODE_ROWS[1])[1]):
            found.append(seed)
    return found


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_tables_bit_identical_on_every_code(libs, kind):
    assert not activation_differences(kind, *libs)


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_tables_are_scratch(libs, kind):
    blob = activation_model(np.random.default_rng(0), kind, (2, 3, 5))
    ref, opt = (runtime.Model(blob, lib=lib) for lib in libs)
    assert (ref.scratch_bytes(), opt.scratch_bytes()) == ([0], [256])


@pytest.mark.parametrize("kind, call", [("hard_swish", "dq_hard_swish_s8(p, DQ_LUT_BYTES, table, table);"),
                                        ("leaky_relu", "dq_leaky_relu_s8(p, DQ_LUT_BYTES, table, table);")])
def test_an_activation_table_entry_off_by_one_is_caught(libs, tmp_path, kind, call):
    """Negative control: one table entry (input code 37) one LSB off, or the table
    left unbuilt after the first sample, must be found by the comparison above."""
    src = tmp_path / "runtime"
    shutil.copytree(runtime.SOURCES, src, ignore=shutil.ignore_patterns("fuzz", "mcu"))
    code = (src / "dq_activation_opt.c").read_text()
    assert call in code
    (src / "dq_activation_opt.c").write_text(code.replace(call, call + " table[37] ^= 1;"))
    bad = runtime.load_library(runtime.build("opt", out=tmp_path / "libdq-bad.so", sources=src))
    assert activation_differences(kind, libs[0], bad, range(8)) == list(range(8))
    stale = code.replace("if (ctx->first_sample) {", "if (ctx->first_sample && 0) {")
    (src / "dq_activation_opt.c").write_text(stale)
    bad = runtime.load_library(runtime.build("opt", out=tmp_path / "libdq-stale.so", sources=src))
    assert activation_differences(kind, libs[0], bad, range(8))


def test_scratch_is_planned_in_the_arena(libs):
    blob = random_window_model(1, F.MODE_S8, "conv2d")
    ref, opt = (runtime.Model(blob, lib=lib) for lib in libs)
    assert ref.scratch_bytes() == [0]
    assert opt.scratch_bytes()[0] > 0              # the optimized conv asks for some
    tensors = sum((b + 3) & ~3 for b in ref.tensor_bytes)
    assert ref.lib.dq_arena_bytes(ref.handle) == tensors
    assert opt.lib.dq_arena_bytes(opt.handle) == tensors + ((opt.scratch_bytes()[0] + 3) & ~3)


def _exported(tmp_path, target: str, zoo_name: str) -> bytes:
    return api.export(target, api.open_session(f"zoo:{zoo_name}"), tmp_path / target).path.read_bytes()


@pytest.mark.parametrize("name", ["lenet-digits", "dsnet-digits", "mnv3s-fmnist"])
def test_optimized_set_bit_identical_on_the_zoo(libs, tmp_path, name):
    pytest.importorskip("tensorflow")
    for target in ("mcu-int8", "fpga-fixed"):
        assert not differences(_exported(tmp_path, target, name), *libs, n=4), target


@pytest.mark.parametrize("seed", range(3))
def test_optimized_set_bit_identical_on_random_mcu_models(libs, tmp_path, seed):
    pytest.importorskip("tensorflow")
    import torch

    from deployq.backends import mcu
    from tests.conftest import randomized
    from tests.runtime.test_mcu import Random, _plan
    from deployq import targets as T
    rng = random.Random(seed)
    shape = (rng.choice([1, 2, 3]), rng.randint(5, 13), rng.randint(5, 13))
    model = randomized(Random(rng, shape[0]), seed)
    with torch.no_grad():
        model.fc.weight.mul_(10.0 ** rng.choice([-3, 0, 2]))
    graph = G.capture(model, shape)
    x = np.random.default_rng(seed).random((64, *shape), dtype=np.float32)
    path, _ = mcu.export(graph, _plan(graph, x), T.get("mcu-int8"), tmp_path, x)
    assert not differences(path.read_bytes(), *libs, seed)


@pytest.mark.parametrize("seed", range(3))
def test_optimized_set_bit_identical_on_random_fpga_models(libs, tmp_path, seed):
    from deployq.backends import fpga
    from tests.runtime.test_fpga import _plan, _random_model, _target
    model, shape, rng = _random_model(seed)
    graph = G.capture(model, shape)
    target = _target(acc_bits=rng.choice([12, 16, 32]), acc_overflow=rng.choice(["wrap", "sat"]),
                     out_overflow=rng.choice(["wrap", "sat"]))
    x = np.random.default_rng(seed).random((40, *shape), dtype=np.float32)
    path, _ = fpga.export(graph, _plan(graph, x, target, rounding="rnd"), target, tmp_path)
    assert not differences(path.read_bytes(), *libs, seed)


# --- negative controls: a perturbed optimized kernel is caught -----------------------

PERTURBED = """
#include "dq_kernels.h"
/* test-only: the optimized conv with one output value off by one LSB, when CONDITION */
static dq_status dq_conv2d_s8_perturbed(const dq_ctx *ctx, const dq_window *w,
        const dq_requant_s8 *q, const dq_dims *in_dims, const int8_t *in,
        const int8_t *filter, const int32_t *bias, const dq_dims *out_dims, int8_t *out) {
    dq_status s = dq_conv2d_s8_opt(ctx, w, q, in_dims, in, filter, bias, out_dims, out);
    if (CONDITION) out[0] = (int8_t)(out[0] == 127 ? 126 : out[0] + 1);
    return s;
}
"""


def mutated_library(tmp_path: Path, name: str, old: str, new: str, kernels: str = "opt"):
    """A build of the runtime with `old` replaced by `new` in runtime/NAME (a negative
    control's wrong kernel); `old` must be there."""
    src = tmp_path / "runtime"
    shutil.copytree(runtime.SOURCES, src, ignore=shutil.ignore_patterns("fuzz", "mcu"))
    code = (src / name).read_text()
    assert old in code
    (src / name).write_text(code.replace(old, new))
    return runtime.load_library(runtime.build(kernels, out=tmp_path / "libdq-bad.so",
                                              sources=src))


def perturbed_library(tmp_path: Path, condition: str):
    """An opt build whose conv2d_s8 entry is the optimized kernel plus a wrong LSB."""
    src = tmp_path / "runtime"
    shutil.copytree(runtime.SOURCES, src, ignore=shutil.ignore_patterns("fuzz", "mcu"))
    table = (src / "dq_kernels.c").read_text()
    assert ".conv2d_s8 = dq_conv2d_s8_opt," in table
    table = table.replace(".conv2d_s8 = dq_conv2d_s8_opt,", ".conv2d_s8 = dq_conv2d_s8_perturbed,")
    (src / "dq_kernels.c").write_text(PERTURBED.replace("CONDITION", condition) + table)
    return runtime.load_library(runtime.build("opt", out=tmp_path / "libdq-perturbed.so",
                                              sources=src))


@pytest.mark.parametrize("condition", ["1", "in_dims->w == 1 && out_dims->c % 4 != 0"])
def test_a_perturbed_optimized_kernel_is_caught(libs, tmp_path, condition):
    bad = perturbed_library(tmp_path, condition)
    found = [seed for seed in range(24)
             if differences(random_window_model(seed, F.MODE_S8, "conv2d"), libs[0], bad, seed)]
    assert found, "the comparison missed a wrong output"



@pytest.mark.parametrize("old, new", [
    ("return dq_fx_fit((int32_t)total, q->acc_bits, q->acc_overflow);",
     "return (int32_t)total;"),                           # the wrapped sum not fitted
    ("if (q->acc_overflow == DQ_FX_WRAP) return 1;", "return 1;")])  # saturation ignored
def test_a_wrong_fx_kernel_is_caught(libs, tmp_path, old, new):
    """Negative controls for the optimized FX conv: each shortcut the exactness argument
    of dq_conv2d_fx_opt.c rules out must be found on the random FX conv models."""
    bad = mutated_library(tmp_path, "dq_conv2d_fx_opt.c", old, new)
    assert any(differences(random_window_model(seed, F.MODE_FX, "conv2d"), libs[0], bad, seed)
               for seed in range(24))

@pytest.mark.parametrize("old, new", [
    ("in2 + dq_broadcast_index(d2, h, w, 0)", "in2"),          # a row found wrongly
    ("if (p->rounding != DQ_ROUND_DOUBLE) return 0;", "")])  # single rounding vectorized
def test_a_wrong_mul_kernel_is_caught(libs, tmp_path, old, new):
    """Negative controls for the optimized MUL: on the random MUL models above."""
    bad = mutated_library(tmp_path, "dq_mul_s8_opt.c", old, new)
    assert any(differences(random_window_model(seed, F.MODE_S8, "mul"), libs[0], bad, seed)
               for seed in range(24))


# --- ADD overflow (issue 12, item 5) ------------------------------------------------

def add_overflow_model() -> bytes:
    """252 bytes: one ADD (of a tensor and itself, the second input weighted 0) whose
    output multiplier is INT32_MAX with shift 30: for x = -4 the scaled sum is
    -(2^31 - 1), and adding the output offset (-128) in int32 overflowed."""
    p = {"left_shift": 0, "in1_multiplier": 1 << 30, "in1_shift": 0,
         "in2_multiplier": 0, "in2_shift": 0, "out_multiplier": 2 ** 31 - 1,
         "out_shift": 30, "rounding": 0, "act_min": -128, "act_max": 127}
    tensors = [F.Tensor((1, 1, 256), 0), F.Tensor((1, 1, 256), -128)]
    return F.pack(F.MODE_S8, tensors, [F.Op("add", [0, 0], 1, p)], 0, 1)


ALL_CODES = np.arange(-128, 128, dtype=np.int8)[None]


def test_add_overflow_model_saturates(libs):
    blob = add_overflow_model()
    assert len(blob) == 252
    for lib in libs:
        out = dict(zip(ALL_CODES[0].tolist(), runtime.Model(blob, lib=lib).run(ALL_CODES)[0].tolist()))
        # x = 1: 2^30 * (1 - 2^-31) - 128 saturates high; x = -4: -(2^31 - 1) - 128
        # saturates low (the int32 sum wrapped to +2^31 - 129, i.e. 127, before the fix)
        assert (out[1], out[0], out[-4]) == (127, -128, -128)


def _ubsan_cc() -> str | None:
    for cc in ("clang", "gcc", "cc"):
        if shutil.which(cc) and subprocess.run(
                [cc, "-fsanitize=undefined", "-x", "c", "-", "-o", "/dev/null"],
                input="int main(void){return 0;}", capture_output=True, text=True).returncode == 0:
            return cc
    return None


def _run_under_ubsan(cc: str, sources: Path, tmp_path: Path, blob: bytes):
    exe = tmp_path / "dq_run_file"
    subprocess.run([cc, "-std=c99", "-g", "-O0", "-fsanitize=undefined",
                    "-fno-sanitize-recover=undefined", "-o", str(exe),
                    str(runtime.SOURCES / "fuzz" / "dq_run_file.c"),
                    *map(str, sorted(sources.glob("*.c"))), "-lm"], check=True)
    (tmp_path / "model.dqm").write_bytes(blob)
    (tmp_path / "in.bin").write_bytes(ALL_CODES.tobytes())
    return subprocess.run([str(exe), "model.dqm", "in.bin", "out.bin"], cwd=tmp_path,
                          capture_output=True, text=True)


OLD_ADD = """#include "dq_ops.h"
dq_status dq_add_s8(const dq_add_s8_params *p, int32_t n, const int8_t *in1,
                    const int8_t *in2, int8_t *out) {
    for (int32_t i = 0; i < n; ++i) {
        const int32_t a = (in1[i] + p->in1_offset) * (1 << p->left_shift);
        const int32_t b = (in2[i] + p->in2_offset) * (1 << p->left_shift);
        const int32_t sum = dq_mul_by_quantized_multiplier(a, p->in1_multiplier, p->in1_shift, p->rounding) +
                            dq_mul_by_quantized_multiplier(b, p->in2_multiplier, p->in2_shift, p->rounding);
        const int32_t v = dq_mul_by_quantized_multiplier(sum, p->out_multiplier, p->out_shift, p->rounding) + p->out_offset;
        out[i] = (int8_t)dq_clamp(v, p->act_min, p->act_max);
    }
    return DQ_OK;
}
"""


@pytest.mark.skipif(_ubsan_cc() is None, reason="no C compiler with -fsanitize=undefined")
def test_add_overflow_model_is_clean_under_ubsan_and_the_old_kernel_is_not(tmp_path):
    cc = _ubsan_cc()
    fixed = _run_under_ubsan(cc, runtime.SOURCES, tmp_path, add_overflow_model())
    assert fixed.returncode == 0, fixed.stderr
    old = tmp_path / "old"
    shutil.copytree(runtime.SOURCES, old, ignore=shutil.ignore_patterns("fuzz", "mcu"))
    (old / "dq_add_s8.c").write_text(OLD_ADD)                 # the kernel before the fix
    broken = _run_under_ubsan(cc, old, old, add_overflow_model())
    assert broken.returncode != 0 and "signed integer overflow" in broken.stderr


def test_targets_run_the_optimized_set_unless_they_ask_for_ref(tmp_path):
    from deployq import targets as T
    from deployq.backends import fpga
    from deployq.errors import TargetError
    path = api.export("fpga-fixed", api.open_session("zoo:lenet-digits"), tmp_path).path
    target = T.get("fpga-fixed")
    assert fpga.load(path, target).model.kernels == "opt"
    target.options = dict(target.options, kernels="ref")
    assert fpga.load(path, target).model.kernels == "ref"
    target.options = dict(target.options, kernels="fast")
    with pytest.raises(TargetError, match="kernels='fast'; choose ref or opt"):
        fpga.load(path, target)


def _sanitizer_cc() -> str | None:
    for cc in ("clang", "gcc", "cc"):
        if shutil.which(cc) and subprocess.run(
                [cc, "-fsanitize=address,undefined", "-x", "c", "-", "-o", "/dev/null"],
                input="int main(void){return 0;}", capture_output=True, text=True).returncode == 0:
            return cc
    return None


@pytest.mark.skipif(_sanitizer_cc() is None, reason="no C compiler with ASan and UBSan")
def test_optimized_set_is_clean_under_asan_and_ubsan(tmp_path):
    """The SIMD kernels read and write only inside their tensors and scratch (vector
    loads at channel tails, packed filters), on random single-op models of every kind."""
    exe = tmp_path / "dq_run_file"
    subprocess.run([_sanitizer_cc(), "-std=c99", "-g", "-O1", *runtime.OPT_FLAGS,
                    "-DDQ_KERNELS=opt", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined", "-o", str(exe),
                    str(runtime.SOURCES / "fuzz" / "dq_run_file.c"),
                    *map(str, sorted(runtime.SOURCES.glob("*.c"))), "-lm"], check=True)
    for mode, kind in [(F.MODE_S8, k) for k in KINDS] + [(F.MODE_FX, "conv2d")]:
        for seed in range(6):
            blob = random_window_model(seed, mode, kind)
            rows = _inputs(runtime.Model(blob).tensor_bytes[0], seed, 3)
            (tmp_path / "m.dqm").write_bytes(blob)
            (tmp_path / "in.bin").write_bytes(rows.tobytes())
            run = subprocess.run([str(exe), "m.dqm", "in.bin", "out.bin"], cwd=tmp_path,
                                 capture_output=True, text=True)
            assert run.returncode == 0, (kind, seed, run.stderr[-1500:])
            out = np.fromfile(tmp_path / "out.bin", np.int8).reshape(len(rows), -1)
            np.testing.assert_array_equal(out, runtime.Model(blob, kernels="ref").run(rows))
