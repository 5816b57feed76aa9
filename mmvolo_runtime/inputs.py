"""The images a command names, and the output folder it may write to (stdlib only).

Shared by ``tools/deploy/infer_onnx.py`` (:mod:`.cli`) and ``tools/inference.py``
(:mod:`mmvolo.cli.inference`): both take image files and folders and refuse an output folder
that could overwrite an input. Errors are one-line :class:`~.errors.UsageError` messages.
"""
from __future__ import annotations

import os
import os.path as osp

from .errors import UsageError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def list_images(inputs: list[str]) -> list[str]:
    """The image files named by ``inputs`` (files as given, folders' images sorted, not
    recursive), each once (a file named twice, or also through its folder, comes once)."""
    images: list[str] = []
    for item in inputs:
        if osp.isdir(item):
            images += sorted(osp.join(item, name) for name in os.listdir(item)
                             if name.lower().endswith(IMAGE_SUFFIXES)
                             and osp.isfile(osp.join(item, name)))
        elif osp.isfile(item):
            if not item.lower().endswith(IMAGE_SUFFIXES):
                raise UsageError(f'input {item} is not an image file (expected '
                                 f'{", ".join(IMAGE_SUFFIXES)}); drop it from the inputs')
            images.append(item)
        else:
            raise UsageError(f'input {item} not found')
    if not images:
        raise UsageError(f'no images in {" ".join(inputs)} '
                         f'(looked for {", ".join(IMAGE_SUFFIXES)})')
    first = {osp.realpath(path): path for path in reversed(images)}
    return [path for path in images if first[osp.realpath(path)] == path]


def check_out_dir(out_dir: str, images: list[str], what: str = 'outputs') -> None:
    """Refuse an output folder that is a file, or that is or contains an input's folder
    (through symlinks too); ``what`` names the files written, for the message."""
    if osp.exists(out_dir) and not osp.isdir(out_dir):
        raise UsageError(f'--out-dir {out_dir} is a file; pass a folder')
    out = osp.realpath(out_dir)
    for path in images:
        for folder in {osp.realpath(osp.dirname(osp.abspath(path))),
                       osp.dirname(osp.realpath(path))}:
            if osp.commonpath([out, folder]) == out:
                where = 'is the folder' if folder == out else 'contains the folder'
                raise UsageError(f'--out-dir {out_dir} {where} of input {path}: {what} could '
                                 'overwrite inputs; choose an output folder outside the inputs')
