"""Bad input to the tools ends in one clear line and an exit code, never a traceback.

The checks themselves (:mod:`mmvolo.cli.checks`) are tested directly; one subprocess per
case confirms what a user sees (they run concurrently to keep the suite short).
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tool_helpers import (
    REPO,
    TOY_CONFIG,
    make_tiny_data,
    run_tool_in_process,
    single_line_error,
    tool_command,
    tool_env,
)

from mmvolo.cli import (
    UsageError,
    check_arch,
    check_checkpoint,
    check_data_roots,
    check_seg_config,
    load_config,
)

MISSING_ROOT = 'data/ade/ADEChallengeData2016'
ADE_CONFIG_TEXT = f'''
_base_ = [{str(TOY_CONFIG)!r}]
train_dataloader = dict(dataset=dict(type='ADE20KDataset', data_root={MISSING_ROOT!r}))
'''
CLS_CONFIG_TEXT = '''
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmvolo'], allow_failed_imports=False)
model = dict(type='ImageClassifier', backbone=dict(type='VOLO', arch='d1'),
             head=dict(type='LinearClsHead', num_classes=10, in_channels=384))
train_dataloader = dict(batch_size=2, dataset=dict(type='ImageNet', data_root='data/x'))
test_dataloader = train_dataloader
test_evaluator = dict(type='Accuracy')
train_cfg = dict(by_epoch=True, max_epochs=1)
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
'''


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict[str, Path]:
    """Configs, data and checkpoints for every bad-input case."""
    root = tmp_path_factory.mktemp('errors')
    data = make_tiny_data(root / 'toy', num_train=2, num_val=2)
    paths = {'root': root, 'data': data}
    texts = {
        'ade': ADE_CONFIG_TEXT,
        'cls': CLS_CONFIG_TEXT,
        'empty': 'work_dir = "x"\n',
        'toy': f"_base_ = [{str(TOY_CONFIG)!r}]\ndata_root = {str(data)!r}\n"
               "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
               "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
               "test_dataloader = val_dataloader\n",
    }
    for name, text in texts.items():
        paths[name] = root / f'{name}.py'
        paths[name].write_text(text)
    paths['resnet_ckpt'] = root / 'resnet_seg.pth'
    torch.save({'state_dict': {'backbone.layer1.0.conv1.weight': torch.zeros(8, 8, 3, 3),
                               'decode_head.conv_seg.weight': torch.zeros(6, 8, 1, 1)},
                'meta': {}}, paths['resnet_ckpt'])
    paths['backbone_ckpt'] = root / 'volo_backbone.pth'
    torch.save({'patch_embed.proj.weight': torch.zeros(32, 16, 4, 4),
                'network.0.0.attn.attn.weight': torch.zeros(81, 32)}, paths['backbone_ckpt'])
    return paths


# ------------------------------------------------------------------------ the checks, direct
def test_missing_data_root_names_the_fix(files):
    cfg = load_config(str(files['ade']))
    with pytest.raises(UsageError) as error:
        check_data_roots(cfg, ['train_dataloader'])
    assert str(error.value) == (
        f'data root {MISSING_ROOT} not found: download ADE20K there or set --cfg-options '
        'train_dataloader.dataset.data_root=...')


def test_missing_toy_data_says_how_to_generate_it(files):
    cfg = load_config(str(TOY_CONFIG), {'train_dataloader.dataset.data_root': '/nonexistent'})
    with pytest.raises(UsageError, match='make_toy_dataset.py /nonexistent'):
        check_data_roots(cfg, ['train_dataloader'])


def test_present_data_root_passes(files):
    check_data_roots(load_config(str(files['toy'])), ['train_dataloader', 'test_dataloader'])


def test_config_without_model(files):
    cfg = load_config(str(files['empty']))
    with pytest.raises(UsageError, match='defines no `model`'):
        check_seg_config(cfg, 'empty.py', 'train')


def test_classification_config_is_refused(files):
    cfg = load_config(str(files['cls']))
    with pytest.raises(UsageError, match="'ImageClassifier'.*not an mmseg segmentor"):
        check_seg_config(cfg, 'cls.py', 'test')


def test_segmentation_config_passes(files):
    for mode in ('train', 'test', 'infer'):
        check_seg_config(load_config(str(files['toy'])), 'toy.py', mode)


def test_unknown_arch_gives_the_backbone_message(files):
    cfg = load_config(str(files['toy']), {'model.backbone.arch': 'd9'})
    with pytest.raises(UsageError, match="model.backbone.arch: unknown VOLO arch 'd9'"):
        check_arch(cfg)


def test_checkpoint_of_another_model_says_what_it_is(files):
    cfg = load_config(str(files['toy']))
    with pytest.raises(UsageError, match='not a VOLO segmentor.*looks like a ResNet') as error:
        check_checkpoint(str(files['resnet_ckpt']), cfg)
    assert error.value.exit_code == 1
    with pytest.raises(UsageError, match='VOLO backbone weights only'):
        check_checkpoint(str(files['backbone_ckpt']), cfg)


def test_unreadable_config(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('model = dict(\n')
    with pytest.raises(UsageError, match='cannot read config'):
        load_config(str(bad))
    with pytest.raises(UsageError, match='not found'):
        load_config(str(tmp_path / 'absent.py'))


# ------------------------------------------------------------------ what a user sees (CLI)
def _cases(files: dict[str, Path]) -> dict[str, tuple[list[str], int, str]]:
    """name: (command, exit code, text the error line contains)."""
    toy, data = files['toy'], files['data']
    return {
        'missing data root': (tool_command('train.py', files['ade']), 2,
                              f'data root {MISSING_ROOT} not found: download ADE20K there'),
        'no model in config': (tool_command('train.py', files['empty']), 2,
                               'defines no `model`'),
        'classification config': (tool_command('test.py', files['cls'], files['resnet_ckpt']),
                                  2, 'not an mmseg segmentor'),
        'unknown arch': (tool_command('train.py', toy, '--cfg-options',
                                      'model.backbone.arch=d9'), 2, "unknown VOLO arch 'd9'"),
        'foreign checkpoint': (tool_command('test.py', toy, files['resnet_ckpt']), 1,
                               'looks like a ResNet'),
        'missing checkpoint': (tool_command('inference.py', toy, files['root'] / 'no.pth',
                                            data / 'images' / 'validation', '--out-dir',
                                            files['root'] / 'out'), 2, 'not found'),
    }


#: The one case run through a fresh interpreter, as users run the tools; the others run the
#: same ``__main__`` in this process (no start-up cost per case).
SUBPROCESS_CASE = 'missing data root'


@pytest.mark.parametrize('case', ['missing data root', 'no model in config',
                                  'classification config', 'unknown arch',
                                  'foreign checkpoint', 'missing checkpoint'])
def test_cli_reports_one_line(files, capsys, case):
    command, code, text = _cases(files)[case]
    if case == SUBPROCESS_CASE:
        result = subprocess.run(command, cwd=REPO, env=tool_env(), capture_output=True,
                                text=True, timeout=300)
    else:
        result = run_tool_in_process(command[1], *command[2:], capsys=capsys)
    line = single_line_error(result)
    assert text in line, line
    assert result.returncode == code, result.stderr


# ------------------------------------------- hostile input to inference and analysis tools
@pytest.fixture(scope='module')
def toy_checkpoint(tmp_path_factory) -> Path:
    """A segmentor checkpoint of the toy config (random weights)."""
    from mmvolo.utils import build_model_for_analysis

    model = build_model_for_analysis(str(TOY_CONFIG), outlook_impl=None)
    path = tmp_path_factory.mktemp('toy_ckpt') / 'toy.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def write_image(path: Path, height: int = 32, width: int = 32) -> Path:
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return path


def infer(capsys, checkpoint: Path, *args: object, config: Path = TOY_CONFIG):
    return run_tool_in_process('inference.py', config, checkpoint, *args, '--device', 'cpu',
                               capsys=capsys)


def test_inference_keeps_relative_paths_and_runs_a_strip(toy_checkpoint, tmp_path, capsys):
    """a/x.jpg, b/x.jpg, a/x.png give three overlays; a 16x4000 strip just works when the
    config's test Resize keeps it at least a pixel high (the backbone pads to 16)."""
    import cv2

    inputs = tmp_path / 'in'
    images = [write_image(inputs / name) for name in ('a/x.jpg', 'b/x.jpg', 'a/x.png')]
    strip = write_image(inputs / 'c' / 'strip.png', 16, 4000)
    config = tmp_path / 'wide_resize.py'
    config.write_text(f"_base_ = [{str(TOY_CONFIG)!r}]\ntest_pipeline = [\n"
                      "    dict(type='LoadImageFromFile'),\n"
                      "    dict(type='Resize', scale=(4000, 64), keep_ratio=True),\n"
                      "    dict(type='PackSegInputs')]\n")
    before = {path: path.read_bytes() for path in [*images, strip]}
    out = tmp_path / 'out'
    result = infer(capsys, toy_checkpoint, *images, strip, '--out-dir', out, config=config)
    assert result.returncode == 0, result.stderr
    assert 'wrote 4 overlays' in result.stdout
    written = sorted(str(path.relative_to(out)) for path in out.rglob('*') if path.is_file())
    assert written == ['a/x.jpg.png', 'a/x.png.png', 'b/x.png', 'c/strip.png']
    assert cv2.imread(str(out / 'c' / 'strip.png')).shape == (16, 4000, 3)
    assert all(path.read_bytes() == data for path, data in before.items())


def _out_dir_is_input_folder(inputs: Path, tmp_path: Path) -> Path:
    return inputs


def _out_dir_holds_input_folder(inputs: Path, tmp_path: Path) -> Path:
    return tmp_path


def _out_dir_links_to_input_folder(inputs: Path, tmp_path: Path) -> Path:
    link = tmp_path / 'link'
    link.symlink_to(inputs, target_is_directory=True)
    return link


@pytest.mark.parametrize('make_out_dir', [_out_dir_is_input_folder, _out_dir_holds_input_folder,
                                          _out_dir_links_to_input_folder])
def test_inference_refuses_out_dir_holding_inputs(toy_checkpoint, tmp_path, capsys,
                                                  make_out_dir):
    inputs = tmp_path / 'images'
    image = write_image(inputs / 'x.png')
    before = image.read_bytes()
    result = infer(capsys, toy_checkpoint, inputs, '--out-dir', make_out_dir(inputs, tmp_path))
    line = single_line_error(result)
    assert 'overlays could overwrite inputs' in line and '--out-dir' in line, line
    assert result.returncode == 2
    assert sorted(path.name for path in inputs.iterdir()) == ['x.png']
    assert image.read_bytes() == before


def _text_file(folder: Path) -> Path:
    path = folder / 'notes.txt'
    path.write_text('not an image')
    return path


def _fake_jpeg(folder: Path) -> Path:
    path = folder / 'fake.jpg'
    path.write_bytes(b'\xff\xd8 this is no jpeg')
    return path


def _too_elongated(folder: Path) -> Path:
    return write_image(folder / 'strip.png', 16, 4000)  # the toy Resize makes it 0x64


@pytest.mark.parametrize('make_bad, message', [
    (_text_file, 'is not an image file'),
    (_fake_jpeg, 'is not a readable image'),
    (_too_elongated, 'is 16x4000 (HxW)'),
])
def test_inference_bad_image_is_one_line(toy_checkpoint, tmp_path, capsys, make_bad, message):
    good = write_image(tmp_path / 'in' / 'good.png')
    out = tmp_path / 'out'
    result = infer(capsys, toy_checkpoint, good, make_bad(tmp_path / 'in'), '--out-dir', out)
    assert message in single_line_error(result)
    assert result.returncode == 2
    assert not out.exists()


@pytest.mark.parametrize('tool, args, message', [
    ('analysis/get_flops.py', [TOY_CONFIG, '--shape', '0', '64'], '--shape must be two positive'),
    ('analysis/get_flops.py', [TOY_CONFIG, '--shape', '64', '-32'], '--shape must be two'),
    ('analysis/get_flops.py', ['absent.py'], 'config absent.py not found'),
    ('analysis/benchmark_ops.py', ['--device', 'cpu', '--batch', '0'], '--batch must be at'),
    ('analysis/benchmark_ops.py', ['--device', 'cpu', '--repeats', '0'], '--repeats must be'),
    ('analysis/benchmark_ops.py', ['--device', 'cpu', '--impls', 'fast'],
     '--impls: unknown implementation fast'),
    ('analysis/benchmark_ops.py', ['--device', 'cpu', '--json', 'no/such/dir/b.json'],
     'does not exist'),
    ('analysis/benchmark_ops.py', ['--device', 'cpu', '--batch', 'x'], "invalid int value"),
    ('analysis/benchmark_ops.py', ['--device', 'cpu', '--load', '-1'], '--load must be at least'),
    ('analysis/benchmark_ops.py', ['--device', 'cpu', '--load', 'two'], "invalid int value"),
    ('analysis/benchmark_model.py', ['--device', 'cpu', '--json', 'no/such/dir/r.json'],
     'does not exist'),
    ('analysis/benchmark_model.py', ['--device', 'cpu', '--repeats', '0'], '--repeats must be'),
    ('misc/print_config.py', ['absent.py'], 'config absent.py not found'),
    ('misc/print_config.py', [TOY_CONFIG, '--cfg-options', 'a=[1,2'], "unclosed '['"),
    ('misc/print_config.py', [TOY_CONFIG, '--cfg-options', 'noequals'], 'expected KEY=VALUE'),
    ('analysis/get_flops.py', [TOY_CONFIG, '--cfg-options', 'a=(]'], "unmatched ']'"),
    ('analysis/mixer_ablation.py', ['--mixers', 'conv'], "--mixers: unknown ['conv']; choose"),
    ('analysis/mixer_ablation.py', ['--jobs', '0'], '--jobs must be >= 1'),
    ('analysis/mixer_ablation.py', ['--json', 'no/such/dir/a.json'], 'does not exist'),
])
def test_analysis_tools_bad_arguments(capsys, tool, args, message):
    result = run_tool_in_process(tool, *args, capsys=capsys)
    assert message in single_line_error(result)
    assert result.returncode == 2
    assert 'device=' not in result.stdout  # nothing ran


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
@pytest.mark.parametrize('tool', ['analysis/benchmark_ops.py', 'analysis/benchmark_model.py'])
def test_benchmarks_refuse_cuda_without_a_gpu(capsys, tool):
    result = run_tool_in_process(tool, '--device', 'cuda', capsys=capsys)
    assert 'no CUDA GPU here; use --device cpu' in single_line_error(result)
    assert result.returncode == 2


def test_print_config_broken_file(tmp_path, capsys):
    broken = tmp_path / 'broken.py'
    broken.write_text('model = dict(type="EncoderDecoder",\n')
    result = run_tool_in_process('misc/print_config.py', broken, capsys=capsys)
    assert 'cannot read config' in single_line_error(result)
    assert result.returncode == 2


def test_benchmark_model_exit_status_when_a_case_fails(tmp_path, monkeypatch, capsys):
    tool = _load_tool('benchmark_model')

    def fake_case(argv, name, mode):
        if mode == 'train':
            return dict(model=name, mode=mode, error='RuntimeError: out of memory')
        return dict(model=name, mode=mode, step_ms=1.0, images_per_s=1.0, peak_mib=1.0,
                    params_m=1.0)

    monkeypatch.setattr(tool, 'run_in_subprocess', fake_case)
    report = tmp_path / 'results.json'
    with pytest.raises(UsageError, match='2 of 4 cases failed') as error:
        tool.main(['--device', 'cpu', '--json', str(report)])
    assert error.value.exit_code == 1
    assert 'failed: RuntimeError: out of memory' in capsys.readouterr().out
    assert report.is_file()


def test_benchmark_model_profile_times_every_part():
    """``--profile``: each part's forward time, a Sequential's blocks counted even when the
    backbone iterates them, the parts within the step, and the operator table."""
    tool = _load_tool('benchmark_model')

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3)
            self.stages = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3),
                                                                   torch.nn.Conv2d(8, 8, 3))])

        def forward(self, x):
            x = self.stem(x)
            for block in self.stages[0]:  # iterated: the Sequential's own hooks never fire
                x = block(x)
            return x

    model = torch.nn.Module()
    model.backbone, model.decode_head = Backbone(), torch.nn.Module()
    model.decode_head.conv_seg = torch.nn.Conv2d(8, 2, 1)
    images = torch.randn(1, 3, 32, 32)
    profile = tool.profile_step(model, lambda: model.decode_head.conv_seg(model.backbone(images)),
                                lambda: None, top=5)
    parts = dict(profile['parts'])
    assert set(parts) == {'backbone.stem', 'backbone.stages.0', 'decode_head.conv_seg'}
    assert all(ms > 0 for ms in parts.values())
    assert sum(parts.values()) <= profile['step_ms']
    assert 'aten::' in profile['operators']


def _load_tool(name: str):
    import importlib

    return importlib.import_module(f'mmvolo.analysis.{name}')


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize('fails', [False, True], ids=['finishes', 'raises'])
def test_benchmark_ops_load_processes_stop(monkeypatch, capsys, fails):
    """``--load 2`` runs two spinning processes during the run and none after it, also when
    the run raises."""
    tool = _load_tool('benchmark_ops')
    seen = []

    def fake_run(args):
        children = [child for child in _children() if child not in seen]
        seen.extend(children)
        if fails:
            raise RuntimeError('benchmark failed')
        return []

    monkeypatch.setattr(tool, 'run', fake_run)
    monkeypatch.setattr(tool, 'check_timm_equivalence', lambda device: None)
    before = set(_children())
    if fails:
        with pytest.raises(RuntimeError, match='benchmark failed'):
            tool.main(['--device', 'cpu', '--load', '2'])
    else:
        tool.main(['--device', 'cpu', '--load', '2'])
        assert ' load=2' in capsys.readouterr().out.splitlines()[0]
    spinners = [pid for pid in seen if pid not in before]
    assert len(spinners) == 2
    assert all(_gone(pid) for pid in spinners)


def test_benchmark_ops_busy_load_spins_and_is_joined():
    tool = _load_tool('benchmark_ops')
    with pytest.raises(KeyboardInterrupt), tool.busy_load(2) as procs:
        time.sleep(0.3)
        assert all(proc.poll() is None for proc in procs)
        cpu = [_cpu_seconds(proc.pid) for proc in procs]
        assert all(seconds > 0.05 for seconds in cpu), cpu  # they spin
        raise KeyboardInterrupt
    assert all(proc.returncode is not None and _gone(proc.pid) for proc in procs)


def _children() -> list[int]:
    """Pids of this process's live children (Linux /proc)."""
    pids = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != 'Z':
            pids.append(int(stat.parent.name))
    return pids


def _cpu_seconds(pid: int) -> float:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


# ---------------------------------------------- found by dev/hostile_inputs.py
@pytest.mark.parametrize('flag', ['--work-dir', '--out'])
def test_a_file_where_a_folder_goes(files, toy_checkpoint, tmp_path, capsys, flag):
    afile = tmp_path / 'afile'
    afile.write_text('keep me')
    args = ['--work-dir', tmp_path / 'work'] if flag == '--out' else []
    result = run_tool_in_process('test.py', files['toy'], toy_checkpoint, flag, afile, *args,
                                 capsys=capsys)
    assert f'{flag} {afile} is a file, not a folder' in single_line_error(result)
    assert result.returncode == 2 and afile.read_text() == 'keep me'


def test_train_work_dir_that_is_a_file(files, tmp_path, capsys):
    afile = tmp_path / 'afile'
    afile.write_text('keep me')
    result = run_tool_in_process('train.py', files['toy'], '--work-dir', afile, capsys=capsys)
    assert '--work-dir' in single_line_error(result) and afile.read_text() == 'keep me'


@pytest.mark.parametrize('device, message', [
    ('tpu:7', "--device 'tpu:7' is not a torch device"),
    pytest.param('cuda', 'CUDA is not available here', marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason='needs a machine without CUDA')),
])
def test_inference_device_is_checked(toy_checkpoint, tmp_path, capsys, device, message):
    image = write_image(tmp_path / 'in' / 'x.jpg')
    result = run_tool_in_process('inference.py', TOY_CONFIG, toy_checkpoint, image,
                                 '--out-dir', tmp_path / 'out', '--device', device,
                                 capsys=capsys)
    assert message in single_line_error(result)
    assert not (tmp_path / 'out').exists()


def test_resume_from_weights_without_training_state(files, toy_checkpoint, tmp_path, capsys):
    result = run_tool_in_process('train.py', files['toy'], '--work-dir', tmp_path / 'w',
                                 '--resume', toy_checkpoint, capsys=capsys)
    assert 'holds no training state' in single_line_error(result)
    assert f'load_from={toy_checkpoint} without --resume' in result.stderr
