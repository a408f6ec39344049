"""The "torchcache_c" logger and set_logger_config().

Only the library's own logger is configured, never the root logger: an
application's logging setup stays as it is.  The TORCHCACHE_LOG_* environment
variables are read once at import (torchcache 0.4.1 did the same).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Optional, Union

LOGGER_NAME = "torchcache_c"
logger = logging.getLogger(LOGGER_NAME)

_DEFAULT_FMT = "[torchcache_c] %(asctime)s %(levelname)s %(message)s"
_DEFAULT_DATEFMT = "%Y-%m-%d %H:%M:%S"
_handlers: list = []


def _level_from_env(value: str) -> Optional[int]:
    value = value.strip()
    if value.isdigit():
        return int(value)
    level = logging.getLevelName(value.upper())
    return level if isinstance(level, int) else None


def set_logger_config(
    level: Union[int, str, None] = None,
    fmt: Optional[str] = None,
    datefmt: Optional[str] = None,
    stream: Optional[IO[str]] = None,
    filename: Optional[str] = None,
) -> None:
    """Configure the "torchcache_c" logger (level, format, stream and/or file).

    Arguments left as None fall back to TORCHCACHE_LOG_LEVEL, TORCHCACHE_LOG_FMT,
    TORCHCACHE_LOG_DATEFMT and TORCHCACHE_LOG_FILE, then to WARNING on stderr.
    Calling it again replaces the handlers it installed before.
    """
    env = os.environ
    if level is None and env.get("TORCHCACHE_LOG_LEVEL"):
        level = _level_from_env(env["TORCHCACHE_LOG_LEVEL"])
        if level is None:
            logger.warning(
                "ignoring TORCHCACHE_LOG_LEVEL=%r: use DEBUG, INFO, WARNING, ERROR or CRITICAL",
                env["TORCHCACHE_LOG_LEVEL"],
            )
    if isinstance(level, str):
        level = _level_from_env(level) or logging.WARNING
    formatter = logging.Formatter(
        fmt or env.get("TORCHCACHE_LOG_FMT") or _DEFAULT_FMT,
        datefmt or env.get("TORCHCACHE_LOG_DATEFMT") or _DEFAULT_DATEFMT,
    )
    for handler in _handlers:
        logger.removeHandler(handler)
        handler.close()
    _handlers.clear()
    _handlers.append(logging.StreamHandler(stream or sys.stderr))
    filename = filename or env.get("TORCHCACHE_LOG_FILE")
    if filename:
        _handlers.append(logging.FileHandler(filename))
    for handler in _handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level if level is not None else logging.WARNING)
    # Our handlers print the records; the root logger's would print them twice.
    logger.propagate = False


def _configure_from_env() -> None:
    """At import: configure only if the user asked for it through the environment."""
    keys = ("TORCHCACHE_LOG_LEVEL", "TORCHCACHE_LOG_FMT", "TORCHCACHE_LOG_DATEFMT",
            "TORCHCACHE_LOG_FILE")
    if any(os.environ.get(k) for k in keys):
        set_logger_config()
