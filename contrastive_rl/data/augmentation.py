"""Augmentations of sampled batches."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.envs.transforms import Transform


class RandomShiftCrop(Transform):
    """Random-crop augmentation of the paper: pad by ``pad`` pixels (replicating the border) and crop
    back to size at a random offset, the SAME offset for every key of a sample (an observation and its
    goal), a fresh offset per sample, applied to each sample with probability ``prob``.

    Works on uint8 ``[B, H, W, C]`` images on any device, without a per-sample loop: replicate padding
    is done by clamping the gathered row and column indices.
    """

    def __init__(self, in_keys, pad: int = 4, prob: float = 0.5) -> None:
        super().__init__(in_keys=in_keys, out_keys=in_keys)
        self.pad = pad
        self.prob = prob

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = [key for key in self.in_keys if key in tensordict.keys(include_nested=True)]
        first = tensordict.get(keys[0])
        batch, height, width = first.shape[0], first.shape[-3], first.shape[-2]
        device = first.device
        shift = torch.randint(-self.pad, self.pad + 1, (batch, 2), device=device)
        shift = shift * (torch.rand(batch, 1, device=device) < self.prob)
        rows = (torch.arange(height, device=device) + shift[:, :1]).clamp(0, height - 1)
        cols = (torch.arange(width, device=device) + shift[:, 1:]).clamp(0, width - 1)
        samples = torch.arange(batch, device=device)[:, None, None]
        for key in keys:
            tensordict.set(key, tensordict.get(key)[samples, rows[:, :, None], cols[:, None, :]])
        tensordict.set("crop_shift", shift)
        return tensordict
