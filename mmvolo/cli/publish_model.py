"""Make a training checkpoint publishable: weights and meta only, named by its hash.

The logic behind ``tools/misc/publish_model.py`` (a thin command line over :func:`main`).

    python tools/misc/publish_model.py IN_FILE OUT_FILE

mmseg's ``tools/misc/publish_model.py`` fails on torch >= 2.6 (its ``torch.load`` is
weights-only by default and meets mmengine's ``HistoryBuffer``), hashes the input instead of
what it writes, strips ``.pth`` with ``rstrip`` (``depth.pth`` -> ``de``) and renames in a
background ``mv``. This one reads IN_FILE through :func:`mmvolo.checkpoint.load_checkpoint_file`
(weights-only, no pickled code runs), keeps ``state_dict`` and ``meta`` and drops the
training state (``optimizer``, ``message_hub``, ``param_schedulers``, ``rng_state``, ...),
and writes ``<OUT_FILE without .pth>-<sha256[:8]>.pth`` atomically, the hash being that of
the written file (so ``sha256sum`` checks a download). The result loads with plain
``torch.load(weights_only=True)``. An output that would replace IN_FILE is refused.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import os.path as osp
from typing import Any

from mmvolo.cli import UsageError
from mmvolo.cli.arguments import ToolArgumentParser
from mmvolo.cli.checks import read_checkpoint_for_tool
from mmvolo.fileio import write_bytes_atomic

#: What a published checkpoint keeps; everything else is training state.
KEPT_KEYS = ('meta', 'state_dict')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolArgumentParser(description='Process a checkpoint to be published')
    parser.add_argument('in_file', help='checkpoint saved by a training run')
    parser.add_argument('out_file', help='output name; the hash is inserted before .pth')
    return parser.parse_args(argv)


def publishable(checkpoint: Any) -> dict:
    """``{'state_dict': ..., 'meta': ...}`` of a Runner checkpoint (a bare state dict is
    wrapped); the training state is dropped.

    Raises:
        UsageError: the file holds no tensors to publish.
    """
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        return {key: checkpoint[key] for key in KEPT_KEYS if key in checkpoint}
    if isinstance(checkpoint, dict) and checkpoint and all(
            hasattr(value, 'shape') for value in checkpoint.values()):
        return {'state_dict': checkpoint}
    raise UsageError('the input holds no state_dict (not a checkpoint of a model); pass '
                     'a checkpoint saved by tools/train.py (work_dir/iter_N.pth)', exit_code=1)


def published_name(out_file: str, digest: str) -> str:
    """``a/b.pth`` -> ``a/b-<digest[:8]>.pth`` (``.pth`` added when missing)."""
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    return f'{stem}-{digest[:8]}.pth'


def publish(in_file: str, out_file: str) -> str:
    """Write the publishable checkpoint of ``in_file``; return its path."""
    if not osp.isfile(in_file):
        raise UsageError(f'checkpoint {in_file} not found')
    if osp.isdir(out_file) or out_file.endswith(os.sep):
        raise UsageError(f'{out_file} is a folder: pass a file name, e.g. '
                         f'{osp.join(out_file, "model.pth")}')
    if osp.realpath(out_file) == osp.realpath(in_file):
        raise UsageError(f'output {out_file} is the input: pass another name (the input '
                         'stays as it is)')
    import torch

    buffer = io.BytesIO()
    torch.save(publishable(read_checkpoint_for_tool(in_file)), buffer)
    data = buffer.getvalue()
    final = published_name(out_file, hashlib.sha256(data).hexdigest())
    if osp.realpath(final) == osp.realpath(in_file):
        raise UsageError(f'output {final} is the input: pass another name')
    write_bytes_atomic(data, final)
    return final


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f'published {publish(args.in_file, args.out_file)}')
