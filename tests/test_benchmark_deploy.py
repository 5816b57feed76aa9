"""``tools/analysis/benchmark_deploy.py --dry-run``: every case runs and the table adds up.

Tiny VOLO and Swin-T UperNets (random weights), 64x64 windows, images of 64x64 (one window)
and 128x256 (three): PyTorch eager, onnxruntime fp32 and int8 in one process. Checks the
records (one per model x backend x size, ratios to Swin-T eager, peak RSS), that onnxruntime
fp32 labels equal PyTorch's on >= 99.9 % of the pixels (same weights: the export and the
runtime reproduce ``inference_model``), that the int8 agreement is reported, and that bad
arguments are one line. ``torch.compile`` (a minute even on the tiny models) runs in its own
test on VOLO only.
"""
from __future__ import annotations

import json

import pytest
from tool_helpers import run_tool_in_process, single_line_error

pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')
pytest.importorskip('onnxscript')

pytestmark = pytest.mark.filterwarnings('ignore:``build_loss`` would be deprecated')
TOOL = 'analysis/benchmark_deploy.py'


@pytest.mark.slow(seconds=50)
def test_dry_run_table(tmp_path, capsys):
    report = tmp_path / 'records.json'
    result = run_tool_in_process(TOOL, '--work-dir', tmp_path / 'work', '--dry-run', '--json',
                                 report, capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads(report.read_text())
    cases = {(r['model'], r['backend'], tuple(r['size'])) for r in records}
    assert cases == {(model, backend, size)
                     for model in ('volo-d1_upernet', 'swin-t_upernet')
                     for backend in ('eager', 'ort-fp32', 'ort-int8')
                     for size in ((64, 64), (128, 256))}
    for r in records:
        assert r['median_ms'] > 0 and r['peak_rss_mib'] >= 0 and r['threads'] == 1
        if r['backend'] == 'ort-fp32':
            assert r['agree_eager'] >= 0.999, r
        if r['backend'] == 'ort-int8':
            assert 0 < r['int8_agreement'] <= 1 and r['int8_images'] == 1
    table = result.stdout
    assert 'x Swin eager' in table and 'int8 vs fp32 on 1 held-out toy images' in table
    rows = [line.split() for line in table.splitlines() if line.startswith(('volo', 'swin'))
            and 'eager' in line.split()[1:2]]
    swin = [row for row in rows if row[0] == 'swin-t_upernet']
    assert swin and all(row[5] == '1.00' for row in swin)  # the baseline is 1.00 of itself


@pytest.mark.slow(seconds=70)
def test_dry_run_compile(tmp_path, capsys):
    report = tmp_path / 'records.json'
    result = run_tool_in_process(TOOL, '--work-dir', tmp_path / 'work', '--dry-run',
                                 '--models', 'volo-d1_upernet', '--backends', 'eager',
                                 'compile', '--json', report, capsys=capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    records = {(r['backend'], tuple(r['size'])): r for r in json.loads(report.read_text())}
    assert set(records) == {(b, s) for b in ('eager', 'compile') for s in ((64, 64), (128, 256))}
    first = records[('compile', (64, 64))]
    assert first['compile_s'] > 0 and first['agree_eager'] >= 0.999


@pytest.mark.parametrize('args, message', [
    (('--sizes', '512'), 'expected HxW'),
    (('--repeats', '0'), '--repeats must be at least 1'),
    (('--threads', '0'), '--threads must be at least 1'),
])
def test_bad_arguments_are_one_line(args, message, tmp_path, capsys):
    result = run_tool_in_process(TOOL, '--work-dir', tmp_path / 'work', *args, capsys=capsys)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in single_line_error(result)
    assert not (tmp_path / 'work').exists()
