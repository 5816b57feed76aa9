"""The one checkpoint loader: Runner checkpoints load weights-only, hostile pickles never run,
trust is explicit and per call, and files that are not checkpoints get one line."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from mmvolo.checkpoint import (
    CheckpointError,
    TrustedLoadWarning,
    UntrustedCheckpointError,
    load_checkpoint_file,
)


class RunsCode:
    """Unpickling this runs ``reducer(*args)``: what a hostile checkpoint carries."""

    def __init__(self, reducer, *args) -> None:
        self.reducer, self.args = reducer, args

    def __reduce__(self):
        return self.reducer, self.args


def runner_checkpoint(path: Path) -> Path:
    """What mmengine's Runner saves: a message hub of HistoryBuffers (whose statistics methods
    pickle as getattr(HistoryBuffer, 'min')), numpy scalars/arrays/dtypes in meta."""
    hub = MessageHub('mmvolo-test-hub')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/loss', 0.5)
    hub.update_info('best_score', np.float64(0.75))
    torch.save({'meta': {'seed': 0, 'iter': 4, 'score': np.float32(1.0),
                         'palette': np.zeros((2, 3), np.uint8), 'dtype': np.dtype('f4')},
                'state_dict': {'w': torch.ones(2)}, 'message_hub': hub.state_dict()}, path)
    return path


def test_runner_checkpoint_loads_weights_only(tmp_path):
    loaded = load_checkpoint_file(runner_checkpoint(tmp_path / 'iter_4.pth'))
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.mean() == 1.0 and buffer.min() == 0.5
    assert loaded['meta']['palette'].shape == (2, 3) and loaded['meta']['score'] == 1.0


def _hostile(path: Path, payload: object, legacy: bool = False) -> Path:
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': payload}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


HOSTILE = {
    'os.system': lambda marker: RunsCode(os.system, f'touch {marker}'),
    'builtins.exec': lambda marker: RunsCode(exec, f'open({str(marker)!r}, "w")'),
    'getattr to __init__': lambda marker: RunsCode(getattr, HistoryBuffer, '__init__'),
    'getattr to a classmethod': lambda marker: RunsCode(getattr, HistoryBuffer,
                                                        'register_statistics'),
    'getattr on numpy': lambda marker: RunsCode(getattr, np.ndarray, 'tofile'),
    'pathlib write': lambda marker: RunsCode(Path.write_text, marker, 'pwned'),
}


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy-format'])
@pytest.mark.parametrize('name', list(HOSTILE))
def test_hostile_pickle_never_runs(tmp_path, name, legacy):
    marker = tmp_path / 'pwned'
    path = _hostile(tmp_path / 'iter_8.pth', HOSTILE[name](marker), legacy)
    (tmp_path / 'last_checkpoint').write_text(str(path))  # a Runner work dir marker: no trust
    with pytest.raises(UntrustedCheckpointError, match=r'iter_8\.pth needs pickled code'):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_trust_is_explicit_and_warns_naming_the_file(tmp_path):
    marker = tmp_path / 'ran'
    path = _hostile(tmp_path / 'mine.pth', RunsCode(Path.write_text, marker, 'ok'))
    with pytest.warns(TrustedLoadWarning, match=r'mine\.pth with full trust'):
        load_checkpoint_file(path, trust=True)
    assert marker.read_text() == 'ok'


def _truncated(path: Path) -> None:
    torch.save({'w': torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:1500])


NOT_CHECKPOINTS = {
    'empty': (lambda p: p.write_bytes(b''), 'not a checkpoint \\(the file is empty\\)'),
    'text': (lambda p: p.write_text('hello\n'), 'not a checkpoint \\(it looks like text\\)'),
    'json': (lambda p: p.write_text('{"a": 1}'), 'looks like JSON'),
    'random bytes': (lambda p: p.write_bytes(bytes(range(7, 200)) * 2), 'unknown binary data'),
    'truncated': (_truncated, 'truncated or corrupt'),
    'zip of other files': (lambda p: zipfile.ZipFile(p, 'w').writestr('a.txt', 'x'),
                           'truncated or corrupt'),
    'bare pickle': (lambda p: p.write_bytes(pickle.dumps([1, 2]) + b'junk'), None),
}


@pytest.mark.parametrize('name', list(NOT_CHECKPOINTS))
def test_not_a_checkpoint_is_one_line(tmp_path, name):
    make, message = NOT_CHECKPOINTS[name]
    path = tmp_path / 'model.pth'
    make(path)
    try:
        loaded = load_checkpoint_file(path)
    except CheckpointError as error:
        assert str(path) in str(error) and '\n' not in str(error)
        assert message is None or re.search(message, str(error)), str(error)
    else:
        assert message is None and loaded == [1, 2]  # a plain pickle of plain data is fine


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_checkpoint_file(tmp_path / 'nope.pth')
