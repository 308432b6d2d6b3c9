import copy

import numpy as np

from deployq import api, plan as P, profiling as profile, targets as T


def _plan(session):
    return P.make(session.graph, session.stats, T.get("onnx-int8"))


def test_macs_and_peak_memory_of_lenet_digits(digits_session):
    stats = profile.static(digits_session.graph, _plan(digits_session))
    # conv 8x8x8 outputs x 9 taps, conv 16x4x4 x 72, linear 64x64, linear 64x10
    assert stats["macs"] == 4608 + 18432 + 4096 + 640
    assert stats["bops"] == stats["macs"] * 8 * 8
    # the first conv's 512 int8 outputs are live together with the maxpool's 128
    assert stats["peak_activation_bytes"] == 512 + 128


def test_weight_bytes_are_packed_at_the_stored_bit_width(digits_session):
    plan = _plan(digits_session)
    low = copy.deepcopy(plan)
    for lp in low.layers.values():
        if lp.weight is not None:
            lp.weight.bits = 4
    w8, w4 = (profile.static(digits_session.graph, p) for p in (plan, low))
    n_weights = sum(n.weight.size for n in digits_session.graph.nodes if n.weight is not None)
    assert w8["weight_bytes"] - w4["weight_bytes"] == n_weights // 2
    assert w4["bops"] == w8["bops"] // 2


def test_latency_reports_medians_and_spread():
    stats = profile.latency(lambda x: x.sum(), np.zeros((4, 3), np.float32), repeats=9, batch=8)
    assert stats["batch1_ms_min"] <= stats["batch1_ms_median"] <= stats["batch1_ms_p90"]
    assert stats["throughput_per_s"] > 0 and stats["repeats"] == 9
