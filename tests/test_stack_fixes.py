"""One test per fix in mmvolo.stack_fixes (each one fails without its fix)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmvolo import stack_fixes

ROOT = Path(__file__).resolve().parents[1]
MMCV_LITE = 'mmvolo stand-in' in (getattr(sys.modules.get('mmcv._ext'), '__doc__', '') or '')


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.skipif(not MMCV_LITE, reason='full mmcv with compiled ops is installed')
def test_mmcv_lite_standin_lets_mmseg_models_import():
    without = run_python('import mmseg.models')
    assert without.returncode != 0 and "mmcv._ext" in without.stderr
    code = ('import mmvolo, mmseg.models\n'
            'from mmengine.utils.dl_utils import mmcv_full_available\n'
            'import mmcv._ext as ext\n'
            'assert not mmcv_full_available()\n'
            'try:\n'
            '    ext.nms(None)\n'
            'except RuntimeError as e:\n'
            '    print(e)\n')
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert 'needs full mmcv' in result.stdout


def test_import_mmvolo_prints_nothing_and_config_load_is_quiet():
    code = ('import mmvolo\n'
            'from mmengine.config import Config\n'
            "Config.fromfile('configs/_base_/models/upernet_volo.py')\n")
    quiet = run_python(code)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == '' and quiet.stderr == ''
    noisy = run_python(code.replace('import mmvolo\n', ''))
    assert 'pkg_resources is deprecated' in noisy.stderr


def runner_like_checkpoint(path: Path) -> Path:
    from mmengine.logging import HistoryBuffer

    buffer = HistoryBuffer()
    buffer.update(np.float64(1.5))
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': {'hub': buffer, 'value': np.float64(2.0)}}, path)
    return path


def test_checkpoint_loader_safe_by_default(tmp_path):
    tensors = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, tensors)
    assert stack_fixes.load_checkpoint_file(str(tensors))['state_dict']['w'].sum() == 2
    pickled = runner_like_checkpoint(tmp_path / 'iter_10.pth')
    with pytest.raises(RuntimeError, match='needs pickled code.*--resume'):
        stack_fixes.load_checkpoint_file(str(pickled))


def test_checkpoint_loader_trusts_explicit_and_work_dir_files(tmp_path, monkeypatch):
    explicit = runner_like_checkpoint(tmp_path / 'explicit.pth')
    stack_fixes.trust_checkpoint(explicit)
    assert 'meta' in stack_fixes.load_checkpoint_file(str(explicit))

    work_dir = tmp_path / 'work_dir'
    work_dir.mkdir()
    in_work_dir = runner_like_checkpoint(work_dir / 'iter_20.pth')
    (work_dir / 'last_checkpoint').write_text(str(in_work_dir))
    assert 'meta' in stack_fixes.load_checkpoint_file(str(in_work_dir))

    elsewhere = runner_like_checkpoint(tmp_path / 'other.pth')
    monkeypatch.setenv(stack_fixes.TRUST_ENV_VAR, '1')
    assert 'meta' in stack_fixes.load_checkpoint_file(str(elsewhere))


def test_mmengine_load_checkpoint_goes_through_the_fix(tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint

    pickled = runner_like_checkpoint(tmp_path / 'iter_5.pth')
    with pytest.raises(RuntimeError, match='needs pickled code'):
        _load_checkpoint(str(pickled), map_location='cpu')
    stack_fixes.trust_checkpoint(pickled)
    assert _load_checkpoint(str(pickled), map_location='cpu')['meta']['value'] == 2.0


def test_adapt_cfg_to_cpu():
    cfg = Config(dict(
        model=dict(backbone=dict(norm_cfg=dict(type='SyncBN')),
                   decode_head=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
                   heads=[dict(norm_cfg=dict(type='SyncBN'))]),
        env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    changes = stack_fixes.adapt_cfg_to_cpu(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg['device_ids'] is None
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.model.heads[0].norm_cfg.type == 'BN'
    assert changes == ['gloo backend', 'DDP without device ids', 'SyncBN -> BN']
    assert stack_fixes.adapt_cfg_to_cpu(cfg) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason='the fix applies only without CUDA')
def test_cpu_process_group_and_clean_shutdown():
    code = ('import torch.distributed as dist\n'
            'from mmvolo import stack_fixes\n'
            "assert not stack_fixes.init_cpu_process_group('none')\n"
            "assert stack_fixes.init_cpu_process_group('pytorch')\n"
            "assert dist.get_backend() == 'gloo' and dist.get_world_size() == 1\n"
            'stack_fixes.shutdown_process_group()\n'
            'assert not dist.is_initialized()\n'
            "print('ok')\n")
    env = dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()))
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


def test_slurm_env_is_exported(monkeypatch):
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv('SLURM_PROCID', '3')
    monkeypatch.setenv('SLURM_NTASKS', '8')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'node-[01-02]')
    stack_fixes._export_slurm_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == \
        ('3', '8', '1')
    assert os.environ['MASTER_ADDR'] == 'node-01'


@pytest.mark.parametrize('node_list, host', [('node-[01-02]', 'node-01'), ('a1,a2', 'a1'),
                                             ('gpu[7,9]', 'gpu7'), ('single', 'single')])
def test_first_slurm_host(node_list, host):
    assert stack_fixes.first_slurm_host(node_list) == host


def test_mmseg_visualization_hook_warning_is_silenced():
    code = ('{imp}from mmseg.engine.hooks import SegVisualizationHook\n'
            'from mmseg.visualization import SegLocalVisualizer\n'
            "SegLocalVisualizer.get_instance('v')\n"
            'SegVisualizationHook(draw=False)\n')
    assert run_python(code.format(imp='import mmvolo\n')).stderr == ''
    unfiltered = 'import mmvolo, warnings; warnings.resetwarnings()\n'
    assert 'The draw is False' in run_python(code.format(imp=unfiltered)).stderr


def test_unactionable_mmengine_log_records_are_dropped():
    code = ('{imp}from mmengine.logging import MMLogger, print_log\n'
            "MMLogger.get_instance('run', log_level='INFO')\n"
            'from mmengine.fileio import FileClient\n'
            "FileClient(backend='disk')\n"
            "print_log('a warning users need', logger='current', level=30)\n")
    quiet = run_python(code.format(imp='import mmvolo\n'))
    assert quiet.returncode == 0, quiet.stderr
    assert 'FileClient' not in quiet.stdout and 'HardDiskBackend' not in quiet.stdout
    assert 'a warning users need' in quiet.stdout
    noisy = run_python(code.format(imp=''))
    assert '"FileClient" will be deprecated' in noisy.stdout
