"""The VOLO checkpoint converter: formats, wrappers, layouts, errors, atomic writes, CLI.

Sources are timm VOLO-D1 models with random weights saved to tmp_path in every format the
converter accepts; converted files are loaded back through the backbone's init_cfg.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip('timm')

import mmvolo  # noqa: E402,F401
from mmvolo import VOLO, converter  # noqa: E402
from mmvolo.converter import check_verification, convert_checkpoint, summary_table  # noqa: E402
from mmvolo.fileio import atomic_path  # noqa: E402
from mmvolo.models.embed import resize_pos_embed  # noqa: E402
from mmvolo.models.weights import (  # noqa: E402
    HEAD_KEY_PATTERN,
    CheckpointError,
    NoEmaWeightsError,
)

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / 'tools' / 'model_converters' / 'volo2mmseg.py'
FEATURE_TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def d1():
    """timm VOLO-D1 (random weights), its state dict and raw features on one image."""
    torch.manual_seed(0)
    model = timm.create_model('volo_d1_224', pretrained=False).eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.forward_intermediates(image, norm=False, intermediates_only=True)
    return dict(state_dict=model.state_dict(), image=image, features=features)


@pytest.fixture(scope='module')
def d1_source(d1, tmp_path_factory) -> Path:
    """Flat .pth of the D1 weights."""
    path = tmp_path_factory.mktemp('src') / 'd1_224.pth'
    torch.save(d1['state_dict'], path)
    return path


def save_source(state_dict: dict, path: Path, wrapper: str | None = None,
                prefix: str = '') -> Path:
    tensors = {prefix + key: value for key, value in state_dict.items()}
    if path.suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    else:
        torch.save({wrapper: tensors, 'epoch': 300} if wrapper else tensors, path)
    return path


def load_backbone(path: Path, img_size: int = 224, **kwargs) -> VOLO:
    """Raw-mode backbone (all four block groups) loaded through init_cfg."""
    backbone = VOLO('d1', img_size=img_size, feature_pyramid=False, out_indices=(0, 1, 2, 3),
                    init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    backbone.init_weights()
    return backbone.eval()


def assert_backbone_equals_source(backbone: VOLO, source: dict) -> None:
    own = backbone.state_dict()
    backbone_keys = [key for key in source if not HEAD_KEY_PATTERN.match(key)]
    assert sorted(backbone_keys) == sorted(own)
    for key in backbone_keys:
        assert torch.equal(own[key], source[key]), key


def assert_no_leftovers(folder: Path, expected: set[str]) -> None:
    """Only ``expected`` files are in ``folder`` (no output, no temporary files)."""
    assert {path.name for path in folder.iterdir()} == expected


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name, wrapper, prefix', [
    ('flat.pth', None, ''),
    ('wrapped.pth.tar', 'state_dict', ''),
    ('ema.pth', 'state_dict_ema', ''),
    ('model.bin', 'model', ''),
    ('ddp.pth', 'state_dict', 'module.'),
    ('flat.safetensors', None, ''),
])
def test_round_trip_formats_and_wrappers(d1, tmp_path, name, wrapper, prefix):
    source = save_source(d1['state_dict'], tmp_path / name, wrapper, prefix)
    dst = tmp_path / 'out' / 'volo_d1.pth'
    result = convert_checkpoint(source, dst)
    assert (result.arch, result.src_size) == ('d1', (224, 224))
    assert len(result.report.dropped) == 31 and not result.report.renamed
    loaded = torch.load(dst, map_location='cpu', weights_only=True)
    assert not any(HEAD_KEY_PATTERN.match(key) for key in loaded)
    assert_backbone_equals_source(load_backbone(dst), d1['state_dict'])


@pytest.mark.parametrize('output', ['volo_d1.safetensors', 'volo_d1.pth'])
def test_feature_parity_after_init_cfg_load(d1, d1_source, tmp_path, output):
    """Raw-mode outputs of the converted file equal timm's forward_intermediates."""
    dst = tmp_path / output
    result = convert_checkpoint(d1_source, dst, safetensors=output.endswith('.safetensors'))
    assert result.safetensors == output.endswith('.safetensors')
    with torch.no_grad():
        groups = load_backbone(dst)(d1['image'])
    for index, (got, want) in enumerate(zip(groups, d1['features'])):
        diff = float((got - want).abs().max())
        print(f'\n{output} group {index} max abs diff {diff:.3e}')
        assert got.shape == want.shape and diff <= FEATURE_TOLERANCE


def test_safetensors_flag_forces_format(d1_source, tmp_path):
    from safetensors.torch import load_file

    dst = tmp_path / 'volo_d1.bin'
    convert_checkpoint(d1_source, dst, safetensors=True)
    assert 'network.4.1.mlp.fc2.weight' in load_file(str(dst))


def test_ema_flag_picks_ema_weights(d1, tmp_path):
    plain = d1['state_dict']
    ema = {key: value + 1 if value.is_floating_point() else value for key, value in plain.items()}
    source = tmp_path / 'both.pth.tar'
    torch.save({'state_dict': plain, 'state_dict_ema': ema}, source)
    for use_ema, expected in ((False, plain), (True, ema)):
        dst = tmp_path / f'ema_{use_ema}.pth'
        convert_checkpoint(source, dst, ema=use_ema)
        loaded = torch.load(dst, weights_only=True)
        assert torch.equal(loaded['pos_embed'], expected['pos_embed'])


def test_keep_head_writes_classifier_layout(d1, d1_source, tmp_path):
    dst = tmp_path / 'volo_d1_cls.pth'
    result = convert_checkpoint(d1_source, dst, keep_head=True)
    loaded = torch.load(dst, weights_only=True)
    assert len(loaded) == len(d1['state_dict']) == len(result.report.renamed)
    for key in ('head.cls_token', 'head.post_network.0.attn.kv.weight', 'head.norm.weight',
                'head.head.weight', 'head.aux_head.weight', 'backbone.pos_embed',
                'backbone.network.0.0.attn.attn.weight'):
        assert key in loaded, key
    assert torch.equal(loaded['head.head.weight'], d1['state_dict']['head.weight'])
    # the bare backbone still loads it (head dropped on load)
    assert_backbone_equals_source(load_backbone(dst), d1['state_dict'])
    # and converting the converted file again gives the same classifier file
    again = tmp_path / 'again.safetensors'
    convert_checkpoint(dst, again, keep_head=True)
    from safetensors.torch import load_file
    assert {key: value.shape for key, value in load_file(str(again)).items()} == {
        key: value.shape for key, value in loaded.items()}


def test_img_size_resizes_pos_embed(d1, d1_source, tmp_path):
    dst = tmp_path / 'volo_d1_384.pth'
    result = convert_checkpoint(d1_source, dst, img_size=[384])
    assert result.dst_size == (384, 384)
    assert result.report.resized['pos_embed'] == ((1, 14, 14, 384), (1, 24, 24, 384))
    loaded = torch.load(dst, weights_only=True)
    assert torch.equal(loaded['pos_embed'],
                       resize_pos_embed(d1['state_dict']['pos_embed'], (24, 24)))
    backbone = load_backbone(dst, img_size=384)
    assert torch.equal(backbone.pos_embed.data, loaded['pos_embed'])
    non_square = convert_checkpoint(d1_source, tmp_path / 'wide.pth', img_size=(224, 320))
    assert non_square.report.resized['pos_embed'][1] == (1, 14, 20, 384)


def test_verify_against_timm(d1_source, tmp_path):
    result = convert_checkpoint(d1_source, tmp_path / 'verified.pth', keep_head=True,
                                verify=True)
    assert set(result.verify) == {'group0', 'group1', 'group2', 'group3', 'logits', 'scale'}
    for name, value in result.verify.items():
        if name != 'scale':
            print(f'\nverify {name}: {value:.3e}')
            assert value <= FEATURE_TOLERANCE, name
    table = summary_table(result)
    assert 'VOLO-D1, pretrained at 224x224' in table and 'verify logits' in table


# ------------------------------------------------------------------------------------------
# Errors: one-line message, no output, an existing DST untouched
# ------------------------------------------------------------------------------------------
def truncated(d1_source: Path, folder: Path) -> Path:
    path = folder / 'truncated.pth'
    path.write_bytes(d1_source.read_bytes()[:100_000])
    return path


def corrupt_safetensors(d1_source: Path, folder: Path) -> Path:
    path = folder / 'corrupt.safetensors'
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": garbage}')
    return path


def not_volo(d1_source: Path, folder: Path) -> Path:
    path = folder / 'resnet.pth'
    torch.save({'state_dict': {'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1),
                               'conv1.weight': torch.zeros(64, 3, 7, 7)}}, path)
    return path


def unknown_variant(d1_source: Path, folder: Path) -> Path:
    state_dict = torch.load(d1_source, weights_only=True)
    path = folder / 'd1_cut.pth'
    torch.save({key: value for key, value in state_dict.items()
                if not key.startswith('network.4.1.')}, path)
    return path


def untrusted(d1_source: Path, folder: Path) -> Path:
    path = folder / 'with_args.pth.tar'
    torch.save({'state_dict': torch.load(d1_source, weights_only=True),
                'args': argparse.Namespace(lr=1e-3)}, path)
    return path


def missing(d1_source: Path, folder: Path) -> Path:
    return folder / 'nowhere.pth'


@pytest.mark.parametrize('make_source, message', [
    (missing, r'checkpoint not found: .*nowhere\.pth'),
    (truncated, r'truncated\.pth is truncated or corrupt'),
    (corrupt_safetensors, r'corrupt\.safetensors is truncated or corrupt'),
    (not_volo, r'is not a VOLO checkpoint \(looks like a ResNet'),
    (unknown_variant, r'match no official variant \(layers \(4, 4, 8, 1\)'),
    (untrusted, r'needs pickled code to load \(GLOBAL argparse.Namespace\).*trust=True'),
])
@pytest.mark.parametrize('existing', [False, True])
def test_errors_leave_no_output(d1_source, tmp_path, make_source, message, existing):
    source = make_source(d1_source, tmp_path)
    out = tmp_path / 'out'
    out.mkdir()
    dst = out / 'volo.pth'
    if existing:
        dst.write_bytes(b'previous conversion')
    with pytest.raises(CheckpointError, match=message) as info:
        convert_checkpoint(source, dst)
    assert '\n' not in str(info.value)
    assert_no_leftovers(out, {'volo.pth'} if existing else set())
    if existing:
        assert dst.read_bytes() == b'previous conversion'


def test_trust_loads_pickled_checkpoint(d1, d1_source, tmp_path):
    dst = tmp_path / 'trusted.pth'
    result = convert_checkpoint(untrusted(d1_source, tmp_path), dst, trust=True)
    assert result.arch == 'd1'
    assert_backbone_equals_source(load_backbone(dst), d1['state_dict'])


def test_bad_img_size(d1_source, tmp_path):
    with pytest.raises(converter.ImageSizeError, match='multiples of 16'):
        convert_checkpoint(d1_source, tmp_path / 'x.pth', img_size=[300])
    assert_no_leftovers(tmp_path, set())


def test_failed_verification_and_failed_write_keep_dst(d1_source, tmp_path, monkeypatch):
    dst = tmp_path / 'volo.pth'
    dst.write_bytes(b'previous conversion')
    monkeypatch.setattr(converter, 'verify_conversion',
                        lambda *args, **kwargs: dict(group0=1.0, scale=2.0))
    with pytest.raises(CheckpointError, match='verification failed.*nothing written'):
        convert_checkpoint(d1_source, dst, verify=True)

    def broken_save(state_dict, path, *args, **kwargs):
        Path(path).write_bytes(b'partial')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(converter, 'save_tensors', broken_save)
    with pytest.raises(OSError):
        convert_checkpoint(d1_source, dst)
    assert_no_leftovers(tmp_path, {'volo.pth'})
    assert dst.read_bytes() == b'previous conversion'


def test_check_verification_scales_tolerance():
    check_verification(dict(group0=5e-4, scale=10.))
    with pytest.raises(CheckpointError):
        check_verification(dict(group0=5e-4, scale=1.))


# ------------------------------------------------------------------------------------------
# CLI (each run costs a few seconds of imports: three runs)
# ------------------------------------------------------------------------------------------
def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


@pytest.mark.slow(seconds=5)  # the converter CLI in a fresh interpreter
def test_cli_success(d1_source, tmp_path):
    dst = tmp_path / 'volo_d1.safetensors'
    proc = run_cli(d1_source, dst, '--img-size', '384')
    assert proc.returncode == 0, proc.stderr
    for text in ('VOLO-D1, pretrained at 224x224', 'kept', 'renamed', 'dropped', '31 keys',
                 '384x384', 'parameters'):
        assert text in proc.stdout, text
    assert dst.is_file()


def test_cli_errors(d1_source, tmp_path, capsys):
    dst = tmp_path / 'out.pth'
    proc = run_cli_in_process(capsys, tmp_path / 'nowhere.pth', dst)
    assert proc.returncode == 1
    assert proc.stderr.strip().count('\n') == 0 and 'Traceback' not in proc.stderr
    assert 'checkpoint not found' in proc.stderr
    proc = run_cli_in_process(capsys, not_volo(d1_source, tmp_path), dst, '--keep-head')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'not a VOLO checkpoint (looks like a ResNet' in proc.stderr
    assert not dst.exists()


# ------------------------------------------------------------------------------------------
# Hostile input: DST is SRC, sizes, --ema, file modes, disk full, SIGTERM
# ------------------------------------------------------------------------------------------
def _same_path(src: Path) -> Path:
    return src


def _dotted_path(src: Path) -> Path:
    return src.parent / '.' / src.name


def _symlink(src: Path) -> Path:
    link = src.parent / 'link.pth'
    link.symlink_to(src)
    return link


def _hardlink(src: Path) -> Path:
    link = src.parent / 'hard.pth'
    os.link(src, link)
    return link


@pytest.mark.parametrize('make_dst', [_same_path, _dotted_path, _symlink, _hardlink])
def test_refuses_dst_that_is_src(d1_source, tmp_path, make_dst):
    src = tmp_path / 'src.pth'
    os.link(d1_source, src)  # the shared fixture stays intact even if the check fails
    before = src.stat()
    with pytest.raises(converter.OutputPathError, match='is the input file'):
        convert_checkpoint(src, make_dst(src))
    after = src.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)
    assert not [path for path in tmp_path.iterdir() if '.tmp' in path.name]


@pytest.mark.parametrize('img_size, message', [
    ([100000], 'too large: at most 4096'),
    ([16, 8192], 'too large'),
    ([0], 'positive multiples of 16'),
    ([-16], 'positive multiples of 16'),
    ([300], 'positive multiples of 16'),
    ([224, 224, 224], 'one or two'),
])
def test_img_size_limits(d1_source, tmp_path, img_size, message):
    with pytest.raises(converter.ImageSizeError, match=message) as info:
        convert_checkpoint(d1_source, tmp_path / 'x.pth', img_size=img_size)
    assert '--' not in str(info.value)  # the library names no command-line flag
    assert_no_leftovers(tmp_path, set())


@pytest.mark.parametrize('wrapper', [None, 'state_dict'])
def test_ema_without_ema_weights(d1, tmp_path, wrapper):
    source = save_source(d1['state_dict'], tmp_path / 'plain.pth', wrapper)
    out = tmp_path / 'out'
    with pytest.raises(NoEmaWeightsError, match=r'plain\.pth: checkpoint has no EMA weights'):
        convert_checkpoint(source, out / 'x.pth', ema=True)
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize('name', ['volo_d1.safetensors', 'volo_d1.pth'])
def test_output_mode_follows_umask(d1_source, tmp_path, name):
    previous = os.umask(0o027)
    try:
        convert_checkpoint(d1_source, tmp_path / name)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


def test_sigterm_inside_the_write_removes_the_temporary_file(tmp_path):
    dst = tmp_path / 'volo.pth'
    dst.write_bytes(b'previous conversion')
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(converter.Terminated):
        with converter.sigterm_raises(), atomic_path(dst) as tmp:
            Path(tmp).write_bytes(b'partial')
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before
    assert signal.getsignal(signal.SIGTERM) is previous
    assert_no_leftovers(tmp_path, {'volo.pth'})
    assert dst.read_bytes() == b'previous conversion'


HOLD_INSIDE_THE_WRITE = """
import runpy, sys, time
from pathlib import Path
import mmvolo.converter as converter

marker = Path(sys.argv.pop())


def hold(*args, **kwargs):  # verification, inside atomic_path: the temporary file exists
    marker.write_text('inside the write')
    time.sleep(120)  # SIGTERM ends this


converter.verify_conversion = hold
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.slow(seconds=5)  # the converter CLI in a fresh interpreter
def test_cli_sigterm_mid_write_leaves_nothing(d1_source, tmp_path):
    """SIGTERM while the CLI is inside its write: exit 143, one line, no file left behind.

    The child holds inside the write (its --verify step is replaced by a wait that first
    writes a marker), so the signal always lands while the temporary file exists.
    """
    out = tmp_path / 'out'
    out.mkdir()
    marker = tmp_path / 'inside'
    process = subprocess.Popen(
        [sys.executable, '-c', HOLD_INSIDE_THE_WRITE, str(CLI), str(d1_source),
         str(out / 'x.pth'), '--verify', str(marker)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists() and len(list(out.iterdir())) == 1, 'the CLI never reached its write'
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert 'Traceback' not in stderr
    assert [line for line in stderr.splitlines() if line.startswith('error: ')] == [
        f'error: interrupted by SIGTERM; {out / "x.pth"} not written (left as it was)']
    assert_no_leftovers(out, set())


def run_cli_in_process(capsys, *args: object) -> subprocess.CompletedProcess:
    sys.path.insert(0, str(ROOT / 'tests'))
    try:
        from tool_helpers import run_tool_in_process
    finally:
        sys.path.remove(str(ROOT / 'tests'))
    return run_tool_in_process('model_converters/volo2mmseg.py', *map(str, args),
                               capsys=capsys)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert 'Traceback' not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize('extra, message', [
    (['--img-size', '100000'], 'error: --img-size: image size [100000, 100000] is too large'),
    (['--img-size', '0'], 'error: --img-size: the image size must be one or two positive'),
    (['--img-size', '16', '16', '16'], 'error: --img-size takes H or H W'),
    (['--ema'], 'has no EMA weights (no state_dict_ema or model_ema entry); use its plain '
                'weights; drop --ema'),
    (['--img-size', 'big'], "argument --img-size: invalid int value: 'big'"),
])
def test_cli_usage_errors(d1_source, tmp_path, capsys, extra, message):
    dst = tmp_path / 'x.pth'
    result = run_cli_in_process(capsys, d1_source, dst, *extra)
    assert message in _one_error_line(result)
    assert result.returncode == 2
    assert_no_leftovers(tmp_path, set())


def test_cli_refuses_dst_that_is_src(d1_source, tmp_path, capsys):
    src = tmp_path / 'src.pth'
    os.link(d1_source, src)
    result = run_cli_in_process(capsys, src, src)
    assert 'is the input file' in _one_error_line(result)
    assert result.returncode == 2
    assert src.stat().st_size == d1_source.stat().st_size


def test_cli_disk_full_keeps_dst(d1_source, tmp_path, capsys, monkeypatch):
    dst = tmp_path / 'volo.pth'
    dst.write_bytes(b'previous conversion')

    def full_disk(state_dict, path, *args, **kwargs):
        Path(path).write_bytes(b'partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(converter, 'save_tensors', full_disk)
    result = run_cli_in_process(capsys, d1_source, dst)
    assert _one_error_line(result) == (
        f'error: cannot write {dst}: No space left on device: free some space or write '
        f'elsewhere; {dst} left as it was')
    assert result.returncode == 1
    assert_no_leftovers(tmp_path, {'volo.pth'})
    assert dst.read_bytes() == b'previous conversion'
