"""One set of run defaults (deployq/defaults.py): the CLI's options, api.run and the
robustness stage agree with it."""
from deployq import defaults as D


def _option(command, name):
    return next(p.default for p in command.params if p.name == name)


def test_cli_options_are_the_run_defaults():
    from deployq.cli import cli
    run = D.RUN_DEFAULTS
    for command in ("export", "eval", "profile", "diff", "select"):
        cmd = cli.commands[command]
        assert _option(cmd, "model") == run["model"]
        assert _option(cmd, "out") == run["out"]
        assert _option(cmd, "calib_samples") == run["calib_samples"]
        assert _option(cmd, "seed") == run["seed"]
    ev = cli.commands["eval"]
    assert [float(v) for v in _option(ev, "eps").split(",")] == run["eps"]
    assert _option(ev, "sources").split(",") == run["sources"]
    for key in ("steps", "restarts", "queries"):
        assert _option(ev, key) == run[key]


def test_robustness_config_defaults_are_the_run_defaults():
    from deployq.robustness import Config
    # a strength preset fills what the run leaves None: Config() and a Config built
    # from the run defaults resolve to the same attacks
    assert Config() == Config(**{field: D.RUN_DEFAULTS[key]
                                 for key, field in D.ROBUST_KEYS.items()})


def test_api_reads_the_same_table():
    from deployq import api, models
    assert api.RUN_DEFAULTS is D.RUN_DEFAULTS and api.ROBUST_KEYS is D.ROBUST_KEYS
    assert models.DEFAULT_MODEL == D.MODEL
    assert str(api.DEFAULT_OUT) == D.OUT and api.CALIB_SAMPLES == D.CALIB_SAMPLES


def test_every_run_setting_is_validated():
    """A deployq.toml key without a type check would reach the run unchecked."""
    from deployq import validate
    assert set(D.RUN_DEFAULTS) <= set(validate.CONFIG)
