"""mmvolo.runtime: one test per stack fix (each fails without it), and the guest rule:
``import mmvolo`` changes nothing in the host and imports no host package (mmseg, mmpretrain,
mmdet), importing ``mmvolo.runtime`` applies the fixes. The probes that need a fresh host run
in two interpreters (tests/runtime_probes.py: one without the runtime, one with it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmvolo import runtime
from mmvolo.runtime.distributed import _export_mpi_env as export_mpi_env
from mmvolo.runtime.distributed import _export_slurm_env as export_slurm_env
from mmvolo.stack import provider
from mmvolo.utils import free_port

ROOT = Path(__file__).resolve().parents[1]
MMCV_LITE = 'mmvolo stand-in' in (getattr(sys.modules.get('mmcv._ext'), '__doc__', '') or '')


def run_probes(side: str, *args: str) -> dict:
    """Run one side of tests/runtime_probes.py in a fresh interpreter: {probe: {out, err,
    error, value}}. The host hook (mmvolo-host.pth) is disabled there: the probes are of
    what ``import mmvolo`` and ``import mmvolo.runtime`` do by themselves."""
    result = subprocess.run([sys.executable, str(ROOT / 'tests' / 'runtime_probes.py'), side,
                             *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(os.environ, MMVOLO_HOST_HOOK='0'))
    lines = [line for line in result.stdout.splitlines() if line.startswith('PROBES ')]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(lines[-1][len('PROBES '):])


@pytest.fixture(scope='module')
def guest() -> dict:
    """Probes of a host that imports ``mmvolo`` (and ``mmvolo.cls``) but not the runtime."""
    return run_probes('guest')


@pytest.fixture(scope='module')
def fixed() -> dict:
    """Probes of a host that imports ``mmvolo.runtime`` first."""
    return run_probes('runtime', str(free_port()))


def ran(probes: dict, name: str) -> dict:
    """One probe's record, which must have run without an exception."""
    assert probes[name]['error'] is None, probes[name]['error']
    return probes[name]


@pytest.mark.slow(seconds=12)  # the two probe interpreters, shared by this file's tests
@pytest.mark.skipif(not MMCV_LITE, reason='full mmcv with compiled ops is installed')
def test_mmcv_lite_standin_lets_mmseg_models_import(guest, fixed):
    if provider('mmseg').distribution == 'mmsegmentation':  # onedl's mmseg guards itself
        assert 'mmcv._ext' in (guest['mmseg_models_without_runtime']['error'] or '')
    assert ran(fixed, 'config_bases')['value'] == 'UPerHead'  # it imported mmseg.models
    full_available, message = ran(fixed, 'mmcv_standin')['value']
    # upstream mmengine must see the stand-in as "no full mmcv" (onedl's checks the spec
    # alone: harmless there, its revert_sync_batchnorm imports fine)
    assert not full_available or provider('mmseg').distribution != 'mmsegmentation'
    assert "mmcv op 'psamask_forward' needs compiled mmcv ops" in message
    install = 'onedl-mmcv' if provider('mmseg').distribution != 'mmsegmentation' else 'mmcv 2.1'
    assert install in message


@pytest.mark.parametrize('probe', ['plugin_import', 'cls_import'])
def test_importing_the_plugin_changes_nothing_in_the_host(guest, probe):
    """``import mmvolo`` registers modules only: mmengine's checkpoint loaders, its logger,
    warning filters and ``sys.modules`` (no stand-ins) are as before the import. (mmvolo.cls
    needs mmpretrain, imported first: onedl-mmpretrain sets warning filters of its own.)"""
    footprint = ran(guest, probe)['value']
    assert (footprint['changed'], footprint['stubs'], footprint['replaced']) == ([], [], [])


def test_importing_the_plugin_does_not_load_dynamo(guest):
    """Marking the dispatcher's trace-time helpers must not import torch._dynamo (0.4 s, and
    numpy.random's Cython runtime module with it) on every ``import mmvolo``; the host
    modules imported before it do not load it either."""
    assert ran(guest, 'plugin_import')['value']['dynamo'] is False


def test_import_mmvolo_registers_it_without_importing_a_host_package(guest):
    """``import mmvolo`` (and the converter) imports neither mmseg nor mmpretrain nor mmdet,
    yet mmseg configs find its segmentor by name."""
    assert ran(guest, 'plugin_host_packages')['value'] == dict(loaded=[], slide_registered=True)


def test_importing_the_runtime_is_what_applies_the_fixes(fixed):
    footprint = ran(fixed, 'runtime_import')['value']
    assert {'logger_init', 'schemes', 'warning_filters'} <= set(footprint['changed'])
    if MMCV_LITE:
        assert 'mmcv._ext' in footprint['replaced'] + footprint['stubs']


def expected_fixes(stack: str, compiled_ops: bool, onedl_package: bool,
                   onedl_mmdet: bool) -> set[str]:
    """The import-time fixes each stack needs, and nothing else."""
    fixes = {'quiet-warnings', 'quiet-log-records', 'weights-only-checkpoint-loader',
             'config-index-cache'}
    if not compiled_ops and (stack == 'openmmlab' or onedl_mmdet):  # unguarded mmcv.ops
        fixes |= {'mmcv-ext-standin', 'torchvision-mmcv-ops'}
    if stack == 'onedl':
        fixes |= {'mmseg-config-scope'} | (set() if onedl_package else {'quiet-onedl-notice'})
    return fixes


def test_the_active_stack_gets_exactly_its_fixes(fixed):
    *facts, active = ran(fixed, 'stack_facts')['value']
    assert set(active) == expected_fixes(*facts)


def test_config_bases_resolve_and_import_is_silent_on_this_stack(fixed):
    """``mmseg::`` bases load (onedl needs the scope fix), mmseg's datasets and models
    import, and nothing is printed; nor by the import of the runtime itself."""
    bases = ran(fixed, 'config_bases')
    assert bases['value'] == 'UPerHead'
    for probe in ('runtime_import', 'stack_facts', 'config_bases', 'mmcv_standin'):
        assert (fixed[probe]['out'], fixed[probe]['err']) == ('', ''), probe


@pytest.mark.skipif(provider('mmseg').distribution != 'mmsegmentation',
                    reason="onedl's stack has no pkg_resources: nothing to silence")
def test_without_the_runtime_config_load_is_noisy(guest):
    """The fix's other half: the same load, silent with the runtime in
    test_config_bases_resolve_and_import_is_silent_on_this_stack, warns without it."""
    assert 'pkg_resources is deprecated' in ran(guest, 'config_without_runtime')['err']


def test_mmengine_checkpoint_loading_goes_through_the_one_loader(tmp_path):
    """With the runtime, mmengine's loader (load_from, resume, init_model) is mmvolo's:
    Runner-style files load weights-only, hostile ones are refused, ``--trust`` is per file."""
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import _load_checkpoint

    from mmvolo.checkpoint import TrustedLoadWarning, UntrustedCheckpointError

    runner_like = tmp_path / 'iter_5.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'message_hub': {'loss': HistoryBuffer([1.0, 2.0], [1, 1])},
                'meta': {'value': np.float64(2.0)}}, runner_like)
    assert _load_checkpoint(str(runner_like), map_location='cpu')['meta']['value'] == 2.0
    hostile = tmp_path / 'hostile.pth'
    torch.save({'state_dict': {}, 'x': Path('.')}, hostile)  # needs a non-allowed global
    (tmp_path / 'last_checkpoint').write_text(str(hostile))  # a marker grants no trust
    with pytest.raises(UntrustedCheckpointError, match='hostile.pth needs pickled code'):
        _load_checkpoint(str(hostile), map_location='cpu')
    runtime.trust_checkpoint(hostile)
    with pytest.warns(TrustedLoadWarning, match='hostile.pth with full trust'):
        assert 'x' in _load_checkpoint(str(hostile), map_location='cpu')


def test_adapt_cfg_to_cpu():
    cfg = Config(dict(
        model=dict(backbone=dict(norm_cfg=dict(type='SyncBN')),
                   decode_head=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
                   heads=[dict(norm_cfg=dict(type='SyncBN'))]),
        env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    changes = runtime.adapt_cfg_to_cpu(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg['device_ids'] is None
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.model.heads[0].norm_cfg.type == 'BN'
    assert changes == ['gloo backend', 'DDP without device ids', 'SyncBN -> BN']
    assert runtime.adapt_cfg_to_cpu(cfg) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason='the fix applies only without CUDA')
def test_cpu_process_group_and_clean_shutdown(fixed):
    """No launcher: no group; ``pytorch`` launcher: a one-process gloo group, shut down
    cleanly."""
    assert ran(fixed, 'cpu_process_group')['value'] == dict(
        started=[False, True], group=['gloo', 1], initialized_after=False)


LAUNCHER_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def unset_launcher_env(monkeypatch) -> None:
    """Unset the launcher variables so that what the test's code exports is undone after it.

    ``monkeypatch.delenv`` records nothing for a variable that is absent, so a value the code
    under test then sets would outlive the test (MASTER_ADDR=node-01 once hung a later
    two-process run in the same pytest worker); ``setenv`` first records the absence.
    """
    for name in LAUNCHER_ENV:
        monkeypatch.setenv(name, 'unset')
        monkeypatch.delenv(name)


def test_slurm_env_is_exported(monkeypatch):
    unset_launcher_env(monkeypatch)
    monkeypatch.setenv('SLURM_PROCID', '3')
    monkeypatch.setenv('SLURM_NTASKS', '8')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'node-[01-02]')
    export_slurm_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == \
        ('3', '8', '1')
    assert os.environ['MASTER_ADDR'] == 'node-01'


def test_config_bases_read_the_model_index_once(monkeypatch):
    """``pkg::`` bases: mmseg's model index (53 YAML files) is read once per process, not per
    base; lookups answer as mmengine's own (the entry, or the ValueError that makes it fall
    back to a base config), and a VOLO config loads to the same result."""
    import mmengine.fileio
    import mmseg
    from mmengine.config import utils

    from mmvolo.runtime import config_index

    package = str(Path(mmseg.__file__).parent)
    assert utils._get_cfg_metainfo is config_index.cached_cfg_metainfo
    original = config_index.mmengine_cfg_metainfo
    reads = []
    real_load = mmengine.fileio.load
    monkeypatch.setattr(mmengine.fileio, 'load', lambda *a, **k: reads.append(a) or
                        real_load(*a, **k))
    monkeypatch.setattr(config_index, '_INDEXES', {})
    with pytest.raises(ValueError):
        config_index.cached_cfg_metainfo(package, '_base_/models/upernet_swin')
    metafiles = len(real_load(str(Path(package) / '.mim' / 'model-index.yml'))['Import'])
    assert len(reads) == 1 + metafiles > 10
    name = next(iter(config_index._INDEXES[package]))
    assert config_index.cached_cfg_metainfo(package, name) == original(package, name)
    with pytest.raises(ValueError):
        original(package, '_base_/models/upernet_swin')
    assert len(reads) == 1 + metafiles  # nothing re-read

    path = str(ROOT / 'configs/volo/volo-d2_upernet_8xb2-80k_cityscapes-512x1024.py')
    cached = Config.fromfile(path).to_dict()
    monkeypatch.setattr(utils, '_get_cfg_metainfo', original)
    assert Config.fromfile(path).to_dict() == cached


@pytest.mark.parametrize('node_list, host', [('node-[01-02]', 'node-01'), ('a1,a2', 'a1'),
                                             ('gpu[7,9]', 'gpu7'), ('single', 'single')])
def test_first_slurm_host(node_list, host):
    assert runtime.first_slurm_host(node_list) == host


def test_mmseg_visualization_hook_warning_is_silenced(fixed):
    assert ran(fixed, 'visualization_hook')['err'] == ''
    assert 'The draw is False' in ran(fixed, 'visualization_hook_unfiltered')['err']


def test_unactionable_mmengine_log_records_are_dropped(guest, fixed):
    quiet = ran(fixed, 'log_records')['out']
    assert 'FileClient' not in quiet and 'HardDiskBackend' not in quiet
    assert 'a warning users need' in quiet
    assert '"FileClient" will be deprecated' in ran(guest, 'log_records_without_runtime')['out']


def test_mpi_environment_is_exported(monkeypatch):
    unset_launcher_env(monkeypatch)
    monkeypatch.setenv('OMPI_COMM_WORLD_RANK', '3')
    monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '4')
    monkeypatch.setenv('OMPI_COMM_WORLD_LOCAL_RANK', '1')
    export_mpi_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == \
        ('3', '4', '1')
    assert os.environ['MASTER_ADDR'] and os.environ['MASTER_PORT'] == '29500'
