"""Probes of the host stack for test_runtime.py, run in a fresh interpreter per side.

Run with ``MMVOLO_HOST_HOOK=0`` (it refuses otherwise): the host hook would do some of the
runtime's fixes lazily. ``python tests/runtime_probes.py guest`` never imports
``mmvolo.runtime``: what ``import mmvolo`` (and ``mmvolo.cls``) changes in the host, and what
the stack prints without the runtime's fixes. ``python tests/runtime_probes.py runtime
[PORT]`` imports it first: what that import changes, which fixes it applied, and that the
stack is then quiet and whole. Each probe is a section whose stdout, stderr and exception are
captured on their own; the script prints one ``PROBES <json>`` line, ``{section: {out, err,
error, value}}``. One interpreter per side (instead of one per probe) keeps the suite's
start-up cost down: each costs ~4 s of CPU.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import sys
import traceback
import warnings
from typing import Any, Callable

PROBES: dict[str, dict[str, Any]] = {}


def probe(function: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``function`` now, with its output and exception captured under its name."""
    out, err = io.StringIO(), io.StringIO()
    entry: dict[str, Any] = dict(value=None, error=None)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            entry['value'] = function()
        except BaseException as exc:  # noqa: BLE001  (a probe reports; the test asserts)
            entry['error'] = f'{type(exc).__name__}: {exc}\n{traceback.format_exc()}'
    PROBES[function.__name__] = dict(entry, out=out.getvalue(), err=err.getvalue())
    return function


def host_state() -> dict[str, Any]:
    """What a plugin must leave alone: checkpoint schemes, logger, filters, loaded modules."""
    from mmengine.logging import MMLogger
    from mmengine.runner.checkpoint import CheckpointLoader
    return dict(
        schemes=dict(CheckpointLoader._schemes),
        logger_init=MMLogger.__init__,
        logger_filters=[list(logger.filters) for logger in MMLogger._instance_dict.values()],
        root_filters=list(logging.getLogger().filters),
        warning_filters=list(warnings.filters),
        modules=dict(sys.modules),
    )


def footprint(module: str) -> dict[str, Any]:
    """What importing ``module`` changed: {changed: [host_state keys], stubs: [modules with
    no loader], replaced: [modules swapped for others], dynamo: torch._dynamo loaded}."""
    import mmengine.logging  # noqa: F401  (what the host already has)
    import mmengine.runner.checkpoint  # noqa: F401
    import torch  # noqa: F401
    before = host_state()
    importlib.import_module(module)
    after = host_state()
    stubs = [name for name, mod in sys.modules.items() if name not in before['modules']
             and getattr(mod, '__spec__', None) is not None and mod.__spec__.loader is None
             and not hasattr(mod, '__path__')]
    changed = [key for key in before if key != 'modules' and before[key] != after[key]]
    replaced = [name for name, mod in before['modules'].items()
                if after['modules'].get(name) is not mod]
    return dict(changed=sorted(changed), stubs=sorted(stubs), replaced=sorted(replaced),
                dynamo='torch._dynamo' in sys.modules)


def log_deprecated_file_client() -> None:
    """An mmengine logger, a deprecation record users cannot act on, and one they need."""
    from mmengine.fileio import FileClient
    from mmengine.logging import MMLogger, print_log
    MMLogger.get_instance('run', log_level='INFO')
    FileClient(backend='disk')
    print_log('a warning users need', logger='current', level=logging.WARNING)


def build_visualization_hook() -> None:
    """mmseg's visualization hook with ``draw=False``, as the configs build it."""
    from mmseg.engine.hooks import SegVisualizationHook
    from mmseg.visualization import SegLocalVisualizer
    SegLocalVisualizer.get_instance('v')
    SegVisualizationHook(draw=False)


def guest_side() -> None:
    """``import mmvolo`` without the runtime, then the stack's own noise."""
    @probe
    def plugin_import():
        return footprint('mmvolo')

    @probe
    def plugin_host_packages():
        """After ``import mmvolo, mmvolo.converter``: host packages loaded, and whether the
        batched sliding-window segmentor is registered in mmengine's root registry."""
        importlib.import_module('mmvolo.converter')
        from mmengine.registry import MODELS
        loaded = sorted({name.split('.')[0] for name in sys.modules
                         if name.split('.')[0] in ('mmseg', 'mmpretrain', 'mmdet')})
        return dict(loaded=loaded,
                    slide_registered=MODELS.get('BatchedSlideEncoderDecoder') is not None)

    @probe
    def log_records_without_runtime():
        log_deprecated_file_client()

    @probe
    def cls_import():
        importlib.import_module('mmpretrain.models')  # the host mmvolo.cls is a guest of
        return footprint('mmvolo.cls')

    @probe
    def mmseg_models_without_runtime():
        importlib.import_module('mmseg.models')

    @probe
    def config_without_runtime():  # last: the config's custom_imports import the runtime
        from mmengine.config import Config
        Config.fromfile('configs/_base_/models/upernet_volo.py')


def runtime_side(port: str) -> None:
    """``import mmvolo.runtime`` first, then the fixes at work, one probe each."""
    @probe
    def runtime_import():
        return footprint('mmvolo.runtime')

    @probe
    def stack_facts():
        import mmvolo.runtime as runtime
        from mmvolo.runtime.mmcv_ext import has_compiled_mmcv_ops
        from mmvolo.stack import active_stack, installed
        return [active_stack(), has_compiled_mmcv_ops(),
                importlib.util.find_spec('onedl') is not None,
                bool(installed('onedl-mmdetection')), sorted(runtime.ACTIVE_FIXES)]

    @probe
    def config_bases():
        from mmengine.config import Config
        cfg = Config.fromfile('configs/volo/volo-d1_upernet_8xb2-160k_ade20k-512x512.py')
        importlib.import_module('mmseg.datasets')
        importlib.import_module('mmseg.models')
        return cfg.model.decode_head.type

    @probe
    def mmcv_standin():
        import mmcv._ext as ext
        from mmengine.utils.dl_utils import mmcv_full_available
        try:
            ext.psamask_forward(None)  # an op no stand-in provides
        except RuntimeError as exc:
            return [mmcv_full_available(), str(exc)]
        return [mmcv_full_available(), None]

    @probe
    def log_records():
        log_deprecated_file_client()

    @probe
    def visualization_hook():
        build_visualization_hook()

    @probe
    def visualization_hook_unfiltered():
        warnings.resetwarnings()
        build_visualization_hook()

    @probe
    def cpu_process_group():  # last: it leaves launcher variables behind
        import torch
        import torch.distributed as dist

        import mmvolo.runtime as runtime
        if torch.cuda.is_available():
            return 'skipped: the fix applies only without CUDA'
        os.environ.update(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                          MASTER_PORT=port)
        started = [runtime.init_cpu_process_group('none'),
                   runtime.init_cpu_process_group('pytorch')]
        group = [dist.get_backend(), dist.get_world_size()]
        runtime.shutdown_process_group()
        return dict(started=started, group=group, initialized_after=dist.is_initialized())


def main() -> None:
    if os.environ.get('MMVOLO_HOST_HOOK') != '0' or '_mmvolo_host_fixes' in sys.modules or \
            any(type(finder).__name__ == 'MmvoloHostHook' for finder in sys.meta_path):
        sys.exit('run the probes with MMVOLO_HOST_HOOK=0: the host hook (mmvolo-host.pth) '
                 'would supply the fixes whose absence the guest side proves')
    side = sys.argv[1]
    if side == 'guest':
        guest_side()
    else:
        runtime_side(sys.argv[2] if len(sys.argv) > 2 else '29500')
    sys.stdout.write('PROBES ' + json.dumps(PROBES, default=repr) + '\n')


if __name__ == '__main__':
    main()
