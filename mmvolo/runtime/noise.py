"""Warnings and log records users of mmvolo cannot act on."""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

_UNACTIONABLE_WARNINGS = (
    # setuptools, each time mmengine resolves an `mmseg::` config base through pkg_resources
    (r'pkg_resources is deprecated', UserWarning),
    # mmengine's FileClient / mmseg's own deprecations triggered inside mmseg, not by users
    (r'.*FileClient.*deprecated', DeprecationWarning),
    (r'.*``build_loss`` would be deprecated', UserWarning),
    (r'.*reduce_zero_label.*deprecated', UserWarning),
    # mmseg's SegVisualizationHook, on every run whose default config leaves draw=False
    (r'The draw is False', UserWarning),
    # onedl-mmcv without compiled ops, at `import mmseg.models`; mmvolo and UperNet never
    # use the op, and the advice ("install mmcv rather than mmcv-lite") is for another stack
    (r'Fail to import ``MultiScaleDeformableAttention``', UserWarning),
)


def silence_unactionable_warnings() -> None:
    """Filter the stack's warnings that say nothing a user of mmvolo can change.

    ``pkg_resources is deprecated`` appears several times per config load; mmseg's and
    mmengine's deprecation notices come from their own internals. Only these exact messages are
    filtered; every other warning still shows.
    """
    for message, category in _UNACTIONABLE_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category)


#: Substrings of mmengine log records (logger warnings, not Python warnings) that users of
#: mmvolo cannot act on: mmengine's own deprecations triggered by mmseg internals, and mmseg's
#: IoUMetric not setting a metric prefix.
UNACTIONABLE_LOG_MESSAGES = (
    '"FileClient" will be deprecated in future',
    '"HardDiskBackend" is the alias of "LocalBackend"',
    'The prefix is not set in metric class',
)


class _DropUnactionableRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(text in message for text in UNACTIONABLE_LOG_MESSAGES)


def filter_unactionable_log_records() -> None:
    """Drop mmengine log records that say nothing a user can change.

    mmengine reports its FileClient/HardDiskBackend deprecations (used by mmseg's transforms and
    hooks) and the missing IoUMetric prefix through its MMLogger at WARNING level on every
    run, so the warning filters above do not reach them. Every MMLogger, present and future,
    gets a logging filter dropping exactly those records.
    """
    from mmengine.logging import MMLogger

    if getattr(MMLogger.__init__, '_mmvolo_filtered', False):
        return
    original_init = MMLogger.__init__

    @functools.wraps(original_init)
    def init_with_filter(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.addFilter(_DropUnactionableRecords())

    init_with_filter._mmvolo_filtered = True  # type: ignore[attr-defined]
    MMLogger.__init__ = init_with_filter
    for logger in MMLogger._instance_dict.values():
        logger.addFilter(_DropUnactionableRecords())


#: What onedl-mmsegmentation prints (on stdout, twice) when the optional ``onedl`` package
#: is absent.
ONEDL_NOTICE = 'Could not import OneDL'


def needs_onedl_notice_filter() -> bool:
    """onedl-mmsegmentation without the optional ``onedl`` package, not yet imported."""
    import importlib.util
    import sys

    from ..stack import provider

    mmseg = provider('mmseg')
    return (mmseg is not None and mmseg.distribution == 'onedl-mmsegmentation'
            and 'mmseg.datasets' not in sys.modules and importlib.util.find_spec('onedl') is None)


def import_mmseg_datasets_quietly() -> bool:
    """Import ``mmseg.datasets`` without onedl-mmsegmentation's "Could not import OneDL".

    onedl-mmsegmentation tries its optional OneDL dataset and transform at import and, when
    the separate ``onedl`` package is absent, prints that line to stdout twice (through
    mmengine's ``print_log`` without a logger, so no log level or filter reaches it). The
    import happens here once, with stdout captured; everything else it prints is passed on.

    Returns:
        False when the stack does not need it.
    """
    import contextlib
    import io
    import sys

    if not needs_onedl_notice_filter():
        return False
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import mmseg.datasets  # noqa: F401
    kept = [line for line in captured.getvalue().splitlines() if line.strip() != ONEDL_NOTICE]
    if kept:
        print('\n'.join(kept), file=sys.stdout)
    return True
