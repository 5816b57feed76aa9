"""Editing mmengine configs in place."""
from __future__ import annotations

from typing import Any


def replace_norm_type(node: Any, old: str, new: str) -> int:
    """Replace ``type=old`` by ``type=new`` in every ``norm_cfg`` below ``node``; count them."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'norm_cfg' and isinstance(value, dict) and value.get('type') == old:
                value['type'] = new
                count += 1
            else:
                count += replace_norm_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        count += sum(replace_norm_type(item, old, new) for item in node)
    return count
