import logging

import pytest

from models.runs._common import honours_quiet, pymc_logs_quiet

PYMC = logging.getLogger("pymc")


class _Config:
    def __init__(self, quiet):
        self.quiet = quiet


def _pymc_messages(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("pymc")]


def test_quiet_holds_back_pymc_info_but_not_warnings(caplog):
    caplog.set_level(logging.INFO, logger="pymc")
    with pymc_logs_quiet(True):
        PYMC.info("NUTS[nutpie]: [coef]")
        logging.getLogger("pymc.sampling").info("Sampling: [log1pz]")
        PYMC.warning("the rhat statistic is larger than 1.01")
    assert _pymc_messages(caplog) == [(logging.WARNING, "the rhat statistic is larger than 1.01")]
    assert PYMC.level == logging.INFO  # restored


def test_not_quiet_leaves_pymc_alone(caplog):
    caplog.set_level(logging.INFO, logger="pymc")
    with pymc_logs_quiet(False):
        PYMC.info("NUTS[nutpie]: [coef]")
    assert _pymc_messages(caplog) == [(logging.INFO, "NUTS[nutpie]: [coef]")]


def test_a_stricter_level_is_kept(caplog):
    caplog.set_level(logging.ERROR, logger="pymc")
    with pymc_logs_quiet(True):
        assert PYMC.level == logging.ERROR  # quiet never lowers a level set by the user
    assert PYMC.level == logging.ERROR


def test_the_level_is_restored_after_a_failed_run(caplog):
    caplog.set_level(logging.INFO, logger="pymc")
    with pytest.raises(RuntimeError), pymc_logs_quiet(True):
        raise RuntimeError("a failed run")
    assert PYMC.level == logging.INFO

    @honours_quiet
    def run(config):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run(_Config(True))
    assert PYMC.level == logging.INFO


@pytest.mark.parametrize(("quiet", "seen"), [(True, logging.WARNING), (False, logging.INFO)])
def test_a_decorated_run_reads_quiet_from_its_config(quiet, seen, caplog):
    caplog.set_level(logging.INFO, logger="pymc")

    @honours_quiet
    def run(config, extra, *, key):
        """A run."""
        PYMC.info("NUTS[nutpie]: [coef]")
        return PYMC.getEffectiveLevel(), extra, key

    assert run(_Config(quiet), 1, key="k") == (seen, 1, "k")
    assert run.__doc__ == "A run."
    assert len(_pymc_messages(caplog)) == (0 if quiet else 1)
