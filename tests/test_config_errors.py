"""Bad VOLO backbone arguments in a config, and malformed ``--cfg-options``: one line each.

The checks are tested directly; ``tools/train.py`` run on a few bad options confirms what a
user sees.
"""
from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import pytest
from tool_helpers import TOY_CONFIG, make_tiny_data, run_tool_in_process, single_line_error

from mmvolo.cli import UsageError, check_arch, load_config
from mmvolo.cli.arguments import CfgOptionsAction, cfg_option_problem
from mmvolo.utils import ConfigError, load_config_file


@pytest.fixture(scope='module')
def toy_cfg():
    return load_config(str(TOY_CONFIG))


@pytest.mark.parametrize('key, value, message', [
    ('out_indices', (0, 5), 'model.backbone.out_indices=(0, 5): must be a non-empty subset'),
    ('out_indices', [1.5], 'model.backbone.out_indices=[1.5]: must be an int or a sequence'),
    ('drop_path_rate', 1.5, r'model.backbone.drop_path_rate=1.5: must be in [0, 1)'),
    ('drop_path_rate', -0.5, r'model.backbone.drop_path_rate=-0.5: must be in [0, 1)'),
    ('img_size', 0, 'model.backbone.img_size=0: must be >= 16'),
    ('img_size', [64, 8], 'model.backbone.img_size=[64, 8]: must be >= 16'),
    ('frozen_stages', 7, 'model.backbone.frozen_stages=7: must be in -1..4'),
])
def test_check_arch_names_the_bad_backbone_key(toy_cfg, key, value, message):
    cfg = copy.deepcopy(toy_cfg)
    cfg.model.backbone[key] = value
    with pytest.raises(UsageError) as info:
        check_arch(cfg)
    assert str(info.value).startswith(message), str(info.value)
    assert '\n' not in str(info.value)


def test_check_arch_accepts_the_toy_config(toy_cfg):
    check_arch(toy_cfg)


def test_option_that_does_not_merge_is_one_line(tmp_path):
    """Tools and analysis helpers read configs through one function: a well-formed option
    that cannot merge (a dict over a string) is one line naming --cfg-options, and an
    absent file names the path."""
    with pytest.raises(UsageError, match=r'^bad --cfg-options: type=\{.x.: 1\} in child') as info:
        load_config(str(TOY_CONFIG), {'model.type.x': 1})
    assert '\n' not in str(info.value)
    with pytest.raises(ConfigError, match=r'^bad --cfg-options: '):
        load_config_file(TOY_CONFIG, {'model.type.x': 1})
    with pytest.raises(ConfigError, match=f'^config {re.escape(str(tmp_path))}.*not found$'):
        load_config_file(tmp_path / 'absent.py')


@pytest.mark.parametrize('item, problem', [
    ('model.backbone.out_indices=[0,1', "unclosed '['"),
    ('a=((', "unclosed '('"),
    ('a=[(1,2],3)', "unmatched ']'"),
    ('a=)(', "unmatched ')'"),
    ('train_cfg.max_iters', 'expected KEY=VALUE'),
    ('=3', 'expected KEY=VALUE'),
])
def test_malformed_cfg_option_is_named(item, problem):
    assert problem in cfg_option_problem(item)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    with pytest.raises(UsageError, match=f'^--cfg-options {re.escape(repr(item))}: '):
        parser.parse_args(['--cfg-options', 'ok=1', item])


def test_well_formed_cfg_options_parse_as_before():
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    args = parser.parse_args(['--cfg-options', 'a=[(1,2),[3,b]]', 'c=1,2', 'd=x', 'e=(0,)'])
    assert args.cfg_options == {'a': [(1, 2), [3, 'b']], 'c': [1, 2], 'd': 'x', 'e': (0,)}


# ------------------------------------------------------------------ what a user sees (CLI)
CLI_CASES = {
    'out_indices out of range': (
        ['model.backbone.out_indices=[0,7]'],
        'error: model.backbone.out_indices=[0, 7]: must be a non-empty subset of 0..3'),
    'unclosed bracket': (
        ['model.backbone.out_indices=[0,1'],
        "error: --cfg-options 'model.backbone.out_indices=[0,1': unbalanced brackets"),
    'mismatched brackets': (['a=[(1,2],3)'], "error: --cfg-options 'a=[(1,2],3)': unbalanced"),
}


@pytest.fixture(scope='module')
def toy_config_file(tmp_path_factory) -> Path:
    """A child of the toy config on two generated images (the errors come before any use)."""
    root = tmp_path_factory.mktemp('config_errors')
    data = make_tiny_data(root / 'toy', num_train=2, num_val=2)
    config = root / 'toy.py'
    config.write_text(f"_base_ = [{str(TOY_CONFIG)!r}]\ndata_root = {str(data)!r}\n"
                      "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
                      "val_dataloader = dict(dataset=dict(data_root=data_root))\n")
    return config


@pytest.mark.parametrize('case', sorted(CLI_CASES))
def test_train_cli_reports_one_line(toy_config_file: Path, case: str, tmp_path, capsys):
    """``tools/train.py`` itself (run in this process: the error comes before training)."""
    result = run_tool_in_process('train.py', toy_config_file, '--work-dir', tmp_path / 'work',
                                 '--cfg-options', *CLI_CASES[case][0], capsys=capsys)
    line = single_line_error(result)
    assert line.startswith(CLI_CASES[case][1]), line
    assert result.returncode == 2, result.stderr
    assert not (Path(result.args[result.args.index('--work-dir') + 1])).exists()
