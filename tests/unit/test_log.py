from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from wrennd import log


@pytest.fixture(autouse=True)
def restore_wrennd_logger() -> Iterator[None]:
    """log.setup configures the process-wide ``wrennd`` logger: put it back for later tests."""
    logger = logging.getLogger("wrennd")
    level, propagate, handlers = logger.level, logger.propagate, logger.handlers[:]
    yield
    logger.setLevel(level)  # setLevel, not the attribute: it also drops cached levels
    logger.propagate, logger.handlers[:] = propagate, handlers


def test_key_value_lines() -> None:
    out = io.StringIO()
    log.setup("debug", stream=out)
    logging.getLogger("wrennd.test").info(
        'made "it"', extra=log.kv(sandbox="sb-1", path="/a b", n=3)
    )
    line = out.getvalue().strip()
    assert line.startswith("ts=")
    assert 'level=info logger=wrennd.test msg="made \\"it\\""' in line
    assert line.endswith('sandbox=sb-1 path="/a b" n=3')


def test_level_filters_and_reload() -> None:
    out = io.StringIO()
    log.setup("warning", stream=out)
    logger = logging.getLogger("wrennd.test")
    logger.info("hidden")
    log.set_level("info")
    logger.info("shown")
    assert "hidden" not in out.getvalue()
    assert "shown" in out.getvalue()
    with pytest.raises(ValueError, match="log level"):
        log.set_level("chatty")
