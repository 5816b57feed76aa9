"""The one builder of random timm VOLO models the tests compare against (timm = reference).

Built on the meta device and filled directly from a seeded generator: timm's own
truncated-normal init of D4/D5 costs more than their forward. Norm scales and BatchNorm
variances are drawn in [0.5, 1.5] so that parity means something.
"""
from __future__ import annotations

from pathlib import Path

import torch


def random_timm_volo(arch: str, img_size: int = 224, seed: int = 0) -> torch.nn.Module:
    """timm's ``volo_<arch>_224`` at ``img_size`` with random weights, in eval mode."""
    import timm

    with torch.device('meta'):
        model = timm.create_model(f'volo_{arch}_224', pretrained=False, img_size=img_size)
    model.to_empty(device='cpu')
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith('num_batches_tracked'):
                tensor.zero_()
            elif name.endswith('running_var') or (tensor.dim() == 1 and
                                                  name.endswith('.weight')):
                tensor.uniform_(0.5, 1.5, generator=generator)
            else:
                tensor.normal_(0, 0.02, generator=generator)
    return model.eval()


def timm_checkpoint(arch: str, path: Path, img_size: int = 224, seed: int = 0
                    ) -> torch.nn.Module:
    """Save a random timm VOLO's flat state dict (an official-style file) to ``path``."""
    model = random_timm_volo(arch, img_size, seed)
    torch.save(model.state_dict(), path)
    return model
