"""mim metadata: ``model-index.yml`` + ``configs/volo/metafile.yaml`` and ``mim search mmvolo``.

Pins down: every paper config in configs/volo has exactly one metafile entry (named after it,
its ``Config`` path exists, its settings match the file name) and the toy config has none;
the only results are the two figures the VOLO paper reports, marked as not reproduced; the
package's ``mmvolo/.mim`` points at the root's model index and configs; and, where openmim is
importable, ``mim search mmvolo`` on a regular (non-editable) install of this tree lists every
config. (mim 0.3.9 looks for ``<site-packages>/mmvolo/.mim``, which an editable install does
not have, so the test installs a copy of the tree into a temporary folder.)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'configs' / 'volo'
NAME = re.compile(r'^volo-(?P<arch>d[1-5])_upernet_8xb(?P<per_gpu>\d)-(?P<iters>\d+)k_'
                  r'(?P<dataset>ade20k|cityscapes)-(?P<crop>\d+x\d+)$')
TOY = 'volo-toy_upernet_1xb2-800iter_toy-64x64'
#: (config, dataset, mIoU): what the paper reports for UperNet (arXiv 2106.13112, abstract)
PAPER = {('volo-d5_upernet_8xb2-160k_ade20k-512x512', 'ADE20K', 54.3),
         ('volo-d4_upernet_8xb1-80k_cityscapes-1024x1024', 'Cityscapes', 84.3)}


def configs() -> set[str]:
    return {path.stem for path in CONFIG_DIR.glob('*.py')}


def entries() -> list[dict]:
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    models = []
    for imported in index['Import']:
        models += yaml.safe_load((ROOT / imported).read_text())['Models']
    return models


def test_every_paper_config_has_one_entry_and_the_toy_none():
    names = [entry['Name'] for entry in entries()]
    assert len(names) == len(set(names)) == 15
    assert set(names) == configs() - {TOY}
    for entry in entries():
        assert entry['Config'] == f"configs/volo/{entry['Name']}.py"
        assert (ROOT / entry['Config']).is_file()
        assert entry['In Collection'] == 'VOLO'


def test_entry_metadata_matches_the_config_name():
    for entry in entries():
        want, meta = NAME.match(entry['Name']), entry['Metadata']
        assert meta['Training Data'] == {'ade20k': 'ADE20K', 'cityscapes': 'Cityscapes'}[
            want['dataset']]
        assert meta['Batch Size'] == 8 * int(want['per_gpu'])
        assert meta['Training Resources'].startswith('8x GPUs')
        assert meta['Iterations'] == int(want['iters']) * 1000
        assert meta['Crop Size'] == want['crop']
        assert meta['Architecture'] == [f"VOLO-{want['arch'].upper()}", 'UPerNet']
        assert meta['FLOPs Input'] == f"1x3x{want['crop']}"
        assert isinstance(meta['Parameters'], int) and meta['Parameters'] > 50_000_000
        assert isinstance(meta['FLOPs'], int) and meta['FLOPs'] > 200e9
        assert 'Weights' not in entry  # nothing was trained here


def test_results_are_only_the_papers_and_marked_not_reproduced():
    found = set()
    for entry in entries():
        source = entry['Metadata']['Results Source']
        if 'Results' not in entry:
            assert source.startswith('none')
            continue
        result = entry['Results']
        assert result['Task'] == 'Semantic Segmentation'
        assert source == 'Reported (paper), not reproduced'
        found.add((entry['Name'], result['Dataset'], result['Metrics']['mIoU']))
    assert found == PAPER


def test_the_package_points_at_the_root_model_index_and_configs():
    mim_dir = ROOT / 'mmvolo' / '.mim'
    assert (mim_dir / 'model-index.yml').resolve() == (ROOT / 'model-index.yml').resolve()
    assert (mim_dir / 'configs').resolve() == (ROOT / 'configs').resolve()
    assert 'recursive-include mmvolo/.mim' in (ROOT / 'MANIFEST.in').read_text()


def test_model_index_loads_with_modelindex():
    load = pytest.importorskip('modelindex.load_model_index').load
    index = load(str(ROOT / 'model-index.yml'))
    assert len(index.models) == 15 and [c.name for c in index.collections] == ['VOLO']


def mim_search_available() -> str | None:
    """Why ``mim search`` cannot run here, or None."""
    try:
        import mim.commands.search  # noqa: F401
    except Exception as error:  # noqa: BLE001 - absent, or broken (no pkg_resources)
        return (f'openmim not importable ({type(error).__name__}: {error}); mim 0.3.9 needs '
                '`pip install --no-deps openmim` (docs/training.md) and pkg_resources '
                '(setuptools<82)')
    return None


def install_copy(tmp_path: Path) -> Path:
    """A regular install of a copy of this tree (its packaging files) into ``tmp_path/site``."""
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('setup.cfg', 'pyproject.toml', 'README.md', 'MANIFEST.in', 'model-index.yml'):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
    shutil.copytree(ROOT / 'configs', src / 'configs', ignore=ignore)
    shutil.copytree(ROOT / 'mmvolo', src / 'mmvolo', symlinks=True, ignore=ignore)
    site = tmp_path / 'site'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--disable-pip-version-check', '--no-deps',
         '--no-build-isolation', '--no-index', '--no-compile', '--target', str(site), '.'],
        cwd=src, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / 'mmvolo' / '.mim' / 'configs' / 'volo' / 'metafile.yaml').is_file()
    return site


@pytest.mark.skipif(mim_search_available() is not None, reason=str(mim_search_available()))
def test_mim_search_lists_every_config(tmp_path: Path):
    site = install_copy(tmp_path)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get('PYTHONPATH')]))
    result = subprocess.run([sys.executable, '-m', 'mim', 'search', 'mmvolo'], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'PYTHONPATH': path, 'PYTHONWARNINGS': 'ignore'})
    assert result.returncode == 0, result.stdout + result.stderr
    listed = set(re.findall(r'^config id: (\S+)$', result.stdout, re.MULTILINE))
    assert listed == configs() - {TOY}
    assert 'reported (paper), not reproduced' in result.stdout
