"""The layers of docs/architecture.md hold: imports inside mmvolo run one way, downwards, and
the tools are thin command lines over importable modules.

The import graph is read from the source (every ``import`` / ``from ... import`` statement,
at module level or inside functions, relative or absolute), so a late import cannot hide
an upward edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'mmvolo'

#: Layer of each top-level part of the package: a part may import its own layer and below.
LAYERS = {
    'version': 0, 'registry': 0, 'stack': 0, 'utils': 0, 'fileio': 0,
    'download': 1, 'checkpoint': 1,
    'ops': 2,
    'models': 3, 'cls': 3,
    'engine': 4, 'datasets': 4, 'runtime': 4, '_host_hook': 4, '_host_fixes': 4,
    'apis': 5, 'cli': 5, 'converter': 5, 'deploy': 5, 'analysis': 5, 'env': 5,
}
#: ``mmvolo/__init__.py`` registers the modules (models, engine): only the applications
#: (layer 5) import it.
TOP = '__init__'
LAYERS[TOP] = 5


def _part(module: str) -> str:
    """'mmvolo.ops.dispatch' -> 'ops'; 'mmvolo' -> '__init__'."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else TOP


def _module_name(path: Path) -> tuple[str, str]:
    """(dotted module name, its package) of a file under mmvolo/."""
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
        return '.'.join(parts), '.'.join(parts)
    return '.'.join(parts), '.'.join(parts[:-1])


def _imports(path: Path) -> list[str]:
    """Every mmvolo module ``path`` imports (absolute names)."""
    module, package = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
                found += [target] if node.module else [f'{target}.{a.name}' for a in node.names]
            else:
                found.append(node.module or '')
    return [name for name in found if name == 'mmvolo' or name.startswith('mmvolo.')]


def _edges() -> list[tuple[str, str, str]]:
    """(file, importer part, imported part) for every cross-part import."""
    edges = []
    for path in sorted(PACKAGE.rglob('*.py')):
        module, _ = _module_name(path)
        source = _part(module)
        for target in _imports(path):
            imported = _part(target)
            if imported != source:
                edges.append((str(path.relative_to(REPO)), source, imported))
    return edges


def test_every_part_has_a_layer():
    parts = {_part(_module_name(path)[0]) for path in PACKAGE.rglob('*.py')}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_imports_run_downwards():
    upward = [f'{file}: {source} (layer {LAYERS[source]}) imports {target} (layer '
              f'{LAYERS[target]})'
              for file, source, target in _edges()
              if source != TOP and LAYERS[target] > LAYERS[source]]
    assert not upward, '\n'.join(upward)


def test_the_import_graph_is_checked_for_real():
    """The reader sees late and relative imports (a broken reader would pass everything)."""
    edges = {(source, target) for _, source, target in _edges()}
    assert ('models', 'ops') in edges  # ``from ..ops import ...`` in models/
    assert ('runtime', 'checkpoint') in edges  # a late import inside a function
    assert (TOP, 'models') in edges


TOOLS = sorted(path for path in (REPO / 'tools').rglob('*.py'))


@pytest.mark.parametrize('tool', TOOLS, ids=lambda path: str(path.relative_to(REPO)))
def test_tools_edit_no_sys_path_and_load_no_file(tool):
    text = tool.read_text()
    for forbidden in ('sys.path', 'spec_from_file_location', 'runpy', 'importlib.util'):
        assert forbidden not in text, f'{tool.name} uses {forbidden}'


def test_tests_import_tools_only_as_commands():
    """Tests reach a tool's code through its module in mmvolo (or run the tool as users do),
    never by loading the script as a module."""
    for path in sorted((REPO / 'tests').glob('*.py')):
        if path.name == Path(__file__).name:
            continue
        for line in path.read_text().splitlines():
            if 'spec_from_file_location' in line:
                assert 'tool' not in line.lower(), f'{path.name}: {line.strip()}'


@pytest.mark.parametrize('old, new, names', [
    ('mmvolo.models.mixers', 'mmvolo.models.token_mixers', ['Involution', 'DWConvMixer']),
    ('mmvolo.models.token_mixer', 'mmvolo.models.mixer_builder', ['build_token_mixer']),
    ('mmvolo.apis', 'mmvolo.cli', ['run_tool', 'UsageError', 'load_config']),
])
def test_renamed_modules_still_import_with_a_deprecation_warning(old, new, names):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace('.', r'\.')):
        module = importlib.import_module(old)
    current = importlib.import_module(new)
    assert all(getattr(module, name) is getattr(current, name) for name in names)


def test_old_cli_submodule_paths_are_the_new_modules():
    """``from mmvolo.apis.checks import ...`` (the pre-rename spelling) reaches mmvolo.cli's."""
    import importlib
    import sys

    for name in [m for m in sys.modules if m == 'mmvolo.apis' or m.startswith('mmvolo.apis.')]:
        sys.modules.pop(name)
    with pytest.warns(DeprecationWarning, match=r'mmvolo\.apis'):
        old = importlib.import_module('mmvolo.apis.checks')
    assert old is importlib.import_module('mmvolo.cli.checks')
    from mmvolo.apis.output_paths import check_output_folders

    from mmvolo.cli.output_paths import check_output_folders as current
    assert check_output_folders is current
