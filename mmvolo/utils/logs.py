"""Quieting mmengine's logger for a block (its INFO summaries while a tool verifies)."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_mmengine_info() -> Iterator[None]:
    """Hold back mmengine's INFO logs (e.g. the checkpoint loaders' summaries) in the block;
    warnings and errors still show."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
