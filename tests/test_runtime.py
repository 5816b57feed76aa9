"""mmvolo.runtime: one test per stack fix (each fails without it), and the guest rule:
``import mmvolo`` changes nothing in the host, importing ``mmvolo.runtime`` applies the fixes."""
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
from mmvolo.stack import provider
from mmvolo.utils import free_port

ROOT = Path(__file__).resolve().parents[1]
MMCV_LITE = 'mmvolo stand-in' in (getattr(sys.modules.get('mmcv._ext'), '__doc__', '') or '')


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.slow(seconds=12)  # two fresh interpreters importing mmseg
@pytest.mark.skipif(not MMCV_LITE, reason='full mmcv with compiled ops is installed')
def test_mmcv_lite_standin_lets_mmseg_models_import():
    if provider('mmseg').distribution == 'mmsegmentation':  # onedl's mmseg guards itself
        without = run_python('import mmseg.models')
        assert without.returncode != 0 and "mmcv._ext" in without.stderr
    code = ('import mmvolo.runtime, mmseg.models\n'
            'from mmengine.utils.dl_utils import mmcv_full_available\n'
            'import mmcv._ext as ext\n'
            # upstream mmengine must see the stand-in as "no full mmcv" (onedl's checks the
            # spec alone: harmless there, its revert_sync_batchnorm imports fine)
            f'assert not mmcv_full_available() or {provider("mmseg").distribution!r} != '
            "'mmsegmentation'\n"
            'try:\n'
            '    ext.psamask_forward(None)\n'  # an op no stand-in provides
            'except RuntimeError as e:\n'
            '    print(e)\n')
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "mmcv op 'psamask_forward' needs compiled mmcv ops" in result.stdout
    install = 'onedl-mmcv' if provider('mmseg').distribution != 'mmsegmentation' else 'mmcv 2.1'
    assert install in result.stdout


IMPORT_FOOTPRINT = """
import importlib, json, logging, sys, warnings
import torch, mmengine.runner.checkpoint, mmengine.logging  # what the host already has
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import CheckpointLoader


def footprint():
    return dict(
        schemes=dict(CheckpointLoader._schemes),
        logger_init=MMLogger.__init__,
        logger_filters=[list(logger.filters) for logger in MMLogger._instance_dict.values()],
        root_filters=list(logging.getLogger().filters),
        warning_filters=list(warnings.filters),
        modules={name: module for name, module in sys.modules.items()},
    )


for host in sys.argv[2:]:  # host packages the plugin module imports: their own footprint
    importlib.import_module(host)
before = footprint()
importlib.import_module(sys.argv[1])
after = footprint()
stubs = [name for name, module in sys.modules.items() if name not in before['modules']
         and getattr(module, '__spec__', None) is not None and module.__spec__.loader is None
         and not hasattr(module, '__path__')]
changed = [key for key in before if key != 'modules' and before[key] != after[key]]
replaced = [name for name, module in before['modules'].items()
            if after['modules'].get(name) is not module]
print(json.dumps(dict(changed=sorted(changed), stubs=sorted(stubs), replaced=sorted(replaced),
                      dynamo='torch._dynamo' in sys.modules)))
"""


def import_footprint(module: str, *hosts: str) -> dict:
    """What importing ``module`` in a fresh interpreter (after ``hosts``) changed in the host:
    {changed: [footprint keys], stubs: [module names], replaced: [...], dynamo: bool}."""
    result = subprocess.run([sys.executable, '-c', IMPORT_FOOTPRINT, module, *hosts], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def plugin_footprint() -> dict:
    """``import mmvolo``'s footprint; ``import mmvolo.models`` or ``mmvolo.ops`` runs the
    package's ``__init__`` first, so this one import covers them."""
    return import_footprint('mmvolo')


@pytest.mark.parametrize('module, hosts', [('mmvolo', ()), ('mmvolo.cls', ('mmpretrain.models',))])
def test_importing_the_plugin_changes_nothing_in_the_host(module, hosts, request):
    """``import mmvolo`` registers modules only: mmengine's checkpoint loaders, its logger,
    warning filters and ``sys.modules`` (no stand-ins) are as before the import. (mmvolo.cls
    needs mmpretrain, imported first: onedl-mmpretrain sets warning filters of its own.)"""
    footprint = (request.getfixturevalue('plugin_footprint') if module == 'mmvolo'
                 else import_footprint(module, *hosts))
    assert (footprint['changed'], footprint['stubs'], footprint['replaced']) == ([], [], [])


def test_importing_the_plugin_does_not_load_dynamo(plugin_footprint):
    """Marking the dispatcher's trace-time helpers must not import torch._dynamo (0.4 s, and
    numpy.random's Cython runtime module with it) on every ``import mmvolo``; the host
    modules imported before it do not load it either."""
    assert plugin_footprint['dynamo'] is False


def test_importing_the_runtime_is_what_applies_the_fixes():
    footprint = import_footprint('mmvolo.runtime')
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


def test_the_active_stack_gets_exactly_its_fixes():
    code = ('import importlib.util, json\n'
            'from mmvolo.stack import active_stack, installed\n'
            'from mmvolo.runtime.mmcv_ext import has_compiled_mmcv_ops\n'
            'ops = has_compiled_mmcv_ops()\n'
            'import mmvolo.runtime as runtime\n'
            'print(json.dumps([active_stack(), ops, importlib.util.find_spec("onedl") is not None,'
            ' bool(installed("onedl-mmdetection")), sorted(runtime.ACTIVE_FIXES)]))\n')
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    *facts, active = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(active) == expected_fixes(*facts)


@pytest.mark.slow(seconds=8)  # fresh interpreters
def test_config_bases_resolve_and_import_is_silent_on_this_stack():
    """``mmseg::`` bases load (onedl needs the scope fix) and nothing is printed."""
    code = ('import mmvolo.runtime\n'
            'from mmengine.config import Config\n'
            "cfg = Config.fromfile('configs/volo/volo-d1_upernet_8xb2-160k_ade20k-512x512.py')\n"
            "assert cfg.model.decode_head.type == 'UPerHead'\n"
            'import mmseg.datasets, mmseg.models\n')
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == '' and result.stderr == ''


@pytest.mark.skipif(provider('mmseg').distribution != 'mmsegmentation',
                    reason="onedl's stack has no pkg_resources: nothing to silence")
def test_without_the_runtime_config_load_is_noisy():
    """The fix's other half: the same load, silent with the runtime in
    test_config_bases_resolve_and_import_is_silent_on_this_stack, warns without it."""
    code = ('import mmvolo\nfrom mmengine.config import Config\n'
            "Config.fromfile('configs/_base_/models/upernet_volo.py')\n")
    assert 'pkg_resources is deprecated' in run_python(code).stderr


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
def test_cpu_process_group_and_clean_shutdown():
    code = ('import torch.distributed as dist\n'
            'from mmvolo import runtime\n'
            "assert not runtime.init_cpu_process_group('none')\n"
            "assert runtime.init_cpu_process_group('pytorch')\n"
            "assert dist.get_backend() == 'gloo' and dist.get_world_size() == 1\n"
            'runtime.shutdown_process_group()\n'
            'assert not dist.is_initialized()\n'
            "print('ok')\n")
    env = dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()))
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


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
    runtime._export_slurm_env()
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


@pytest.mark.slow(seconds=8)  # fresh interpreters
def test_mmseg_visualization_hook_warning_is_silenced():
    code = ('{imp}from mmseg.engine.hooks import SegVisualizationHook\n'
            'from mmseg.visualization import SegLocalVisualizer\n'
            "SegLocalVisualizer.get_instance('v')\n"
            'SegVisualizationHook(draw=False)\n')
    assert run_python(code.format(imp='import mmvolo.runtime\n')).stderr == ''
    unfiltered = 'import mmvolo.runtime, warnings; warnings.resetwarnings()\n'
    assert 'The draw is False' in run_python(code.format(imp=unfiltered)).stderr


@pytest.mark.slow(seconds=6)  # fresh interpreters
def test_unactionable_mmengine_log_records_are_dropped():
    code = ('{imp}from mmengine.logging import MMLogger, print_log\n'
            "MMLogger.get_instance('run', log_level='INFO')\n"
            'from mmengine.fileio import FileClient\n'
            "FileClient(backend='disk')\n"
            "print_log('a warning users need', logger='current', level=30)\n")
    quiet = run_python(code.format(imp='import mmvolo.runtime\n'))
    assert quiet.returncode == 0, quiet.stderr
    assert 'FileClient' not in quiet.stdout and 'HardDiskBackend' not in quiet.stdout
    assert 'a warning users need' in quiet.stdout
    noisy = run_python(code.format(imp=''))
    assert '"FileClient" will be deprecated' in noisy.stdout


def test_mpi_environment_is_exported(monkeypatch):
    unset_launcher_env(monkeypatch)
    monkeypatch.setenv('OMPI_COMM_WORLD_RANK', '3')
    monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '4')
    monkeypatch.setenv('OMPI_COMM_WORLD_LOCAL_RANK', '1')
    runtime._export_mpi_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == \
        ('3', '4', '1')
    assert os.environ['MASTER_ADDR'] and os.environ['MASTER_PORT'] == '29500'
