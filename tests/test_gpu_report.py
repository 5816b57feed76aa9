"""The one prepared GPU run (`mmvolo.analysis.gpu_report`), checked on CPU through --dry-run.

What this pins down, so the first run on a real GPU cannot fail on a typo:

* the full dry run (every stage, ``--profile`` included) runs on CPU, exits 0 and writes
  report.md and report.json: one record per stage, each ``ok``, with real numbers (kernel
  errors below their tolerances, a training loss that fell, a resume that continued,
  images/s, a profiler table);
* the report is rewritten after every stage (a later stage finds the earlier one's result on
  disk), an exception in one stage is recorded (one line in report.md, the traceback in the
  JSON) and the next stage still runs, with exit status 1 at the end;
* a stage whose budget has run out skips the rest and says so (``partial``, exit 0); one that
  runs past its hard limit is interrupted and recorded as failed; a time limit set inside a
  stage (torch.compile's) nests in the stage's own;
* without CUDA and without --dry-run: one line on stderr naming --dry-run, exit 2, nothing
  written; a bad --stages name or an --out that is a file: one line, exit 2.
"""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from tool_helpers import run_tool_in_process, single_line_error

from mmvolo.cli import UsageError

ALL_STAGES = ['kernels', 'ops', 'backbone', 'training', 'throughput', 'memory', 'profile']


@pytest.fixture(scope='module')
def tool():
    from mmvolo.analysis import gpu_report
    return gpu_report


def _report(out) -> dict:
    return json.loads((out / 'report.json').read_text())


def _stages(out) -> dict:
    return {stage['name']: stage for stage in _report(out)['stages']}


def _with_fn(tool, monkeypatch, name: str, fn, **changes) -> None:
    monkeypatch.setitem(tool.STAGES, name, dataclasses.replace(tool.STAGES[name], fn=fn,
                                                               **changes))


@pytest.mark.slow(seconds=35)
def test_dry_run_runs_every_stage_on_cpu_and_reports_numbers(tool, tmp_path):
    out = tmp_path / 'report'
    tool.main(['--out', str(out), '--dry-run', '--profile'])  # returns: exit status 0

    report = _report(out)
    assert report['dry_run'] is True
    stages = _stages(out)
    assert list(stages) == ALL_STAGES
    assert {name: (s['status'], s['error']) for name, s in stages.items()} == {
        name: ('ok', None) for name in ALL_STAGES}
    assert all(check['passed'] for s in stages.values() for check in s['checks'])

    kernels = stages['kernels']['records']
    assert {row['impl'] for row in kernels} >= {'reference', 'chunked'}
    assert {row['dtype'] for row in kernels} == {'fp32', 'bf16', 'fp16'}
    assert {row['stride'] for row in kernels} == {1, 2}
    for row in kernels:
        assert row['ok'] and row['out_err'] <= row['tol_out'], row
        assert row['grad_logits_err'] <= row['tol_grad_logits'], row
    assert max(row[key] for row in kernels if row['dtype'] == 'fp32'
               for key in ('out_err', 'grad_v_err', 'grad_logits_err')) < 1e-5

    ops = stages['ops']
    assert {row['impl'].split()[0] for row in ops['records']} >= {'reference', 'timm', 'chunked'}
    assert all(row['fwd_ms'] > 0 and row['fwdbwd_ms'] > 0 for row in ops['records'])
    assert ops['values']['copy bandwidth GB/s'] > 0
    assert len(ops['targets']) == 4 and all(t['met'] in (True, False) for t in ops['targets'])

    backbone = {row['check']: row for row in stages['backbone']['records']}
    assert backbone['torch._dynamo.explain']['graph_breaks'] == 0

    train, resumed = stages['training']['records']
    assert train['exit'] == 0 and train['loss_end'] < train['loss_start']
    assert resumed['exit'] == 0 and resumed['iterations'] == '3-4'
    assert (out / 'training' / 'train.log').is_file()

    throughput = stages['throughput']['records']
    assert {(row['model'], row['mode']) for row in throughput} == {
        (model, mode) for model in ('volo-d1_upernet', 'swin-t_upernet')
        for mode in ('train', 'infer')}
    assert all(row['images_per_s'] > 0 for row in throughput)
    assert [row['ran'] for row in stages['memory']['records']] == [True]
    assert 'Self CPU' in stages['profile']['blocks'][0]['text']
    assert (out / 'profile.txt').is_file()

    markdown = (out / 'report.md').read_text()
    assert 'CPU dry run' in markdown and 'torch' in markdown and 'Triton' in markdown
    for index, name in enumerate(ALL_STAGES, 1):
        assert f'## {index}. {name}: ok' in markdown


def test_report_written_after_every_stage_and_a_failing_stage_does_not_stop_the_next(
        tool, tmp_path, monkeypatch):
    out = tmp_path / 'report'
    seen_on_disk = []

    def broken(run):
        run.add(case='measured before the error', value=1.5)
        raise RuntimeError('boom\nsecond line of the message')

    def probe(run):
        seen_on_disk.append(_stages(out))
        run.check('the probe ran', True)

    _with_fn(tool, monkeypatch, 'kernels', broken)
    _with_fn(tool, monkeypatch, 'ops', probe)
    with pytest.raises(UsageError, match=r'1 of 2 stages failed \(kernels\)') as error:
        tool.main(['--out', str(out), '--dry-run', '--stages', 'ops,kernels'])
    assert error.value.exit_code == 1

    before_ops = seen_on_disk[0]
    assert before_ops['kernels']['status'] == 'failed'
    assert before_ops['kernels']['records'] == [dict(case='measured before the error', value=1.5)]
    assert before_ops['ops']['status'] == 'running'
    stages = _stages(out)
    assert stages['kernels']['error'] == 'RuntimeError: boom'
    assert 'second line of the message' in stages['kernels']['traceback']
    assert stages['ops']['status'] == 'ok'
    markdown = (out / 'report.md').read_text()
    assert '## 1. kernels: FAILED' in markdown and '`RuntimeError: boom`' in markdown
    assert '## 2. ops: ok' in markdown


def test_budget_run_out_skips_the_rest_and_hard_limit_interrupts(tool, tmp_path, monkeypatch):
    out = tmp_path / 'report'

    def hangs(run):
        time.sleep(30)

    monkeypatch.setattr(tool, 'HARD_LIMIT_EXTRA_S', 0.5)
    _with_fn(tool, monkeypatch, 'kernels', tool.STAGES['kernels'].fn, budget_s=0)
    _with_fn(tool, monkeypatch, 'ops', hangs, budget_s=0)
    _with_fn(tool, monkeypatch, 'backbone', lambda run: run.add(ran=True))
    started = time.monotonic()
    with pytest.raises(UsageError, match=r'1 of 3 stages failed \(ops\)'):
        tool.main(['--out', str(out), '--dry-run', '--stages', 'kernels', 'ops', 'backbone'])
    assert time.monotonic() - started < 20

    stages = _stages(out)
    assert stages['kernels']['status'] == 'partial' and not stages['kernels']['records']
    assert stages['kernels']['skipped'] == ['24 of 24 cases not run: the 0 s budget ran out']
    assert stages['ops']['status'] == 'failed' and 'hard limit' in stages['ops']['error']
    assert stages['backbone']['status'] == 'ok' and stages['backbone']['records'] == [
        dict(ran=True)]
    assert 'partial (budget ran out)' in (out / 'report.md').read_text()


def test_time_limits_nest(tool):
    stages = tool.gpu_stages
    with pytest.raises(stages.StageTimeout, match='outer'):
        with stages.time_limit(0.6, 'outer'):
            with pytest.raises(stages.BudgetExceeded, match='inner'):
                with stages.time_limit(0.1, 'inner', stages.BudgetExceeded):
                    time.sleep(5)
            time.sleep(5)  # the outer limit was re-armed with the time it had left
    with stages.time_limit(0.3, 'outer'):
        with pytest.raises(stages.StageTimeout) as error:
            with stages.time_limit(5, 'inner', stages.BudgetExceeded):  # ends later: not armed
                time.sleep(5)
    assert not isinstance(error.value, stages.BudgetExceeded)


def test_without_cuda_and_without_dry_run_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    out = tmp_path / 'report'
    result = run_tool_in_process('analysis/gpu_report.py', '--out', out, capsys=capsys)
    assert result.returncode == 2
    assert '--dry-run' in single_line_error(result)
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
    assert not out.exists()


@pytest.mark.parametrize('args, message', [
    (['--stages', 'kernels', 'kernel'], 'unknown stage kernel; valid stages: kernels, ops, '
     'backbone, training, throughput, memory, profile'),
    (['--stages', 'ops,,nope'], 'unknown stage nope'),
    (['--out', 'FILE'], 'is a file; pass a folder'),
])
def test_bad_arguments_one_line_exit_2(tmp_path, capsys, args, message):
    existing_file = tmp_path / 'file.txt'
    existing_file.write_text('not a folder')
    args = [str(existing_file) if arg == 'FILE' else arg for arg in args]
    if '--out' not in args:
        args = ['--out', str(tmp_path / 'report'), *args]
    result = run_tool_in_process('analysis/gpu_report.py', '--dry-run', *args, capsys=capsys)
    assert result.returncode == 2
    assert message in single_line_error(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'report').exists()
