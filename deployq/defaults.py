"""The default settings of a run, written once: the CLI's option defaults, api.run's
configuration (the keys a deployq.toml may set) and its robustness stage read them
here. Add a setting by adding its key (and, for the robustness stage, its
robustness.Config field in ROBUST_KEYS). Plain values only: the CLI imports this
module before any heavy framework."""
from __future__ import annotations

MODEL = "zoo:lenet-digits"
OUT = "deployq-out"
CALIB_SAMPLES = 512

RUN_DEFAULTS = {"model": MODEL, "weights": None, "data": None,
                "targets": None, "out": OUT, "calibration": None,
                "samples": None, "seed": 0, "calib_samples": CALIB_SAMPLES,
                "targets_dir": None,
                # uniform bits for every target without a plan (None: the target's default)
                "weight_bits": None, "activation_bits": None,
                # plan.json files (e.g. from 'deployq select') used for their targets
                "plans": [],
                # bit selection inside run (deployq.selection), for every target without
                # a plan: {budget = "4bits", method = "adversarial", eps, refine,
                # activation_budget, rounding, max_clean_drop}; None: no selection
                "select": None,
                # robustness stage (attacks = [] turns it off): a strength preset
                # (robustness.PRESETS: fast, standard, thorough) whose attacks, steps,
                # restarts, target_classes and queries a key given here overrides;
                # eps as numbers or fractions ("8/255")
                # 'fast' for run: 'standard' on the embedded default costs several CPU
                # minutes (about 1100 gradient steps per eps through float and two
                # mirrors, 1000 Square queries on each of seven subjects, mcu-qemu's
                # emulated; docs/robustness.md "Cost"), not the 60 s aimed for; eval
                # --attacks and --strength use standard
                "strength": "fast", "attacks": None, "eps": [0.05, 0.1, 0.2],
                "sources": ["transfer", "bpda", "blackbox"], "steps": None,
                "restarts": None, "target_classes": None, "queries": None,
                "robust_samples": 200, "temperature": 1.0,
                # profiling stage: latency repeats (0 turns it off)
                "profile_repeats": 30,
                # certify stage (deployq.certification): eps list ([] turns it off), samples
                "certify": [], "certify_samples": 200,
                # amplify stage (deployq.amplify): PGD eps (None turns it off), samples,
                # on every target that can dump its tensors
                "amplify": None, "amplify_samples": 100,
                # the MCU clock of the reports' device-time estimates (None: the export's,
                # 168 MHz)
                "mcu_clock_mhz": None}

# run setting -> robustness.Config field
ROBUST_KEYS = {"attacks": "attacks", "eps": "eps", "sources": "sources", "steps": "steps",
               "restarts": "restarts", "queries": "queries", "robust_samples": "samples",
               "temperature": "temperature", "strength": "strength",
               "target_classes": "target_classes"}


def csv(key: str) -> str:
    """A list setting as the CLI's comma-separated default text."""
    return ",".join(str(v) for v in RUN_DEFAULTS[key])
