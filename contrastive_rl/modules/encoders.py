"""Image encoders of the critic and the policy: the paper's CNN and OGBench's IMPALA stack."""
from __future__ import annotations

import torch
from torch import nn


def encode_images(net, pixels: torch.Tensor, out_features: int) -> torch.Tensor:
    """``net`` over uint8 images ``[..., H, W, 3]``, scaled to [0, 1] and made channels-first on their
    device, as ``[..., out_features]``."""
    batch_shape = pixels.shape[:-3]
    images = pixels.reshape(-1, *pixels.shape[-3:]).permute(0, 3, 1, 2).float().div(255.0)
    return net(images).reshape(*batch_shape, out_features)


class PixelEncoder(nn.Module):
    """The paper's shallow CNN: 3 conv layers (32, 64, 64 channels; kernels 8, 4, 3; strides 4, 2, 1),
    each followed by a LayerNorm over (channels, height, width) and a ReLU, then flattened.

    Takes uint8 images ``[..., H, W, 3]`` and scales them to [0, 1] on their device.
    """

    def __init__(self, image_size: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        layers = []
        channels, size = 3, image_size
        for out_channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            size = (size - kernel) // stride + 1
            if size < 1:
                raise ValueError(f"images of {image_size} pixels are too small for the encoder (at least 36)")
            layers += [
                nn.Conv2d(channels, out_channels, kernel, stride, device=device),
                nn.LayerNorm([out_channels, size, size], device=device),
                nn.ReLU(),
            ]
            channels = out_channels
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = channels * size * size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(self.net, pixels, self.out_features)


class ImpalaSmallEncoder(nn.Module):
    """OGBench's ``impala_small`` image encoder (``impls/utils/encoders.py``: its IMPALA ResNet with one
    residual block per stack): three stacks of 16, 32, 32 channels, each a 3 x 3 conv, a 3 x 3 max-pool of
    stride 2 and a residual block of two ReLU-conv pairs; then ReLU, flatten, Linear to 512 and ReLU.

    Takes uint8 images ``[..., H, W, 3]`` and scales them to [0, 1] on their device.
    """

    def __init__(self, image_size: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        stacks, channels, size = [], 3, image_size
        for out_channels in (16, 32, 32):
            stacks.append(ImpalaStack(channels, out_channels, device=device))
            channels, size = out_channels, (size + 1) // 2
        self.stacks = nn.Sequential(*stacks, nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels * size * size, 512, device=device), nn.ReLU())
        self.out_features = 512
        for module in self.modules():  # flax's xavier_uniform kernels and zero biases, as OGBench's encoder
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(lambda images: self.head(self.stacks(images)), pixels, self.out_features)


class ImpalaStack(nn.Module):
    """conv 3 x 3, max-pool 3 x 3 / 2 ('SAME' padding), then x + conv(relu(conv(relu(x))))."""

    def __init__(self, in_channels: int, channels: int, device=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1, device=device)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, device=device),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x))
        return x + self.block(x)


ENCODERS = {"cnn": PixelEncoder, "impala_small": ImpalaSmallEncoder}


class SharedEncoderView(nn.Module):
    """The critic's encoder seen from the actor: same weights, output detached, so the actor loss never
    trains the encoder and the encoder's parameters stay the critic's alone."""

    def __init__(self, encoder: PixelEncoder) -> None:
        super().__init__()
        self.__dict__["encoder"] = encoder  # not a submodule: its parameters belong to the critic
        self.out_features = encoder.out_features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels).detach()
