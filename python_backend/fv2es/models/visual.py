"""The RepVGG visual encoder (FV2ES sec. III-B; Ding et al. 2021).

Trained with multi-branch blocks (3x3 conv+BN, 1x1 conv+BN, identity BN); `reparameterise()` turns a
copy into the single-branch deploy form (one 3x3 conv with bias per block, BN folded in the stem too),
which computes the same function, faster.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from .. import config


def conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout))


def fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of conv(kernel) followed by bn in eval mode: W * gamma / sigma, beta - mu * gamma / sigma."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.branch3x3: Optional[nn.Sequential] = conv_bn(cin, cout, 3)
        self.branch1x1: Optional[nn.Sequential] = conv_bn(cin, cout, 1)
        self.identity: Optional[nn.BatchNorm2d] = nn.BatchNorm2d(cout) if cin == cout else None
        self.fused: Optional[nn.Conv2d] = None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        assert self.branch3x3 is not None and self.branch1x1 is not None
        out = self.branch3x3(x) + self.branch1x1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    @torch.no_grad()
    def reparameterise(self) -> None:
        """Replaces the branches by one 3x3 conv computing the same eval-mode function."""
        assert self.branch3x3 is not None and self.branch1x1 is not None
        kernel, bias = fold_bn(self.branch3x3[0].weight, self.branch3x3[1])
        k1, b1 = fold_bn(self.branch1x1[0].weight, self.branch1x1[1])
        kernel = kernel + nn.functional.pad(k1, [1, 1, 1, 1])
        bias = bias + b1
        if self.identity is not None:
            eye = torch.zeros(self.cout, self.cin, 3, 3, device=kernel.device, dtype=kernel.dtype)
            eye[torch.arange(self.cout), torch.arange(self.cin), 1, 1] = 1.0
            ki, bi = fold_bn(eye, self.identity)
            kernel, bias = kernel + ki, bias + bi
        self.fused = nn.Conv2d(self.cin, self.cout, 3, padding=1, bias=True).to(kernel.device)
        self.fused.weight.copy_(kernel)
        self.fused.bias.copy_(bias)
        self.branch3x3 = self.branch1x1 = self.identity = None


class Stem(nn.Module):
    """5x5 conv + BN + ReLU + max-pool; its BN folds into the conv for deployment like the blocks'."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 5, padding=2, bias=False)
        self.bn: Optional[nn.BatchNorm2d] = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.pool(self.act(x))

    @torch.no_grad()
    def reparameterise(self) -> None:
        assert self.bn is not None
        kernel, bias = fold_bn(self.conv.weight, self.bn)
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 5, padding=2, bias=True).to(kernel.device)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.conv, self.bn = conv, None


class RepVGGEncoder(nn.Module):
    """48x48 grey face -> feature.

    The reference's widths 64-64-128-256-512 with max-pools between, but two blocks per resolution
    (seven in all, four with an identity branch) and a 32-wide stem: the same training time on CPU as
    one block per resolution at 64 wide, with the depth that FER2013 accuracy needs.
    """

    def __init__(
        self,
        *,
        widths: tuple[int, ...] = (32, 64, 64, 128, 128, 256, 256, 512),
        pool_after: tuple[int, ...] = (2, 4, 6),
        in_channels: int = 1,
        feature_dim: int = config.FEATURE_DIM,
        dropout: float = 0.2,
        mirror_average: bool = config.FACE_MIRROR_AVERAGE,
    ):
        super().__init__()
        self.mirror_average = mirror_average
        self.stem = Stem(in_channels, widths[0])
        layers: list[nn.Module] = []
        for i in range(1, len(widths)):
            layers.append(RepVGGBlock(widths[i - 1], widths[i]))
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], feature_dim)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [B, 1, FACE_SIZE, FACE_SIZE] normalised -> features [B, feature_dim].

        In eval mode with mirror_average, the features are those of the face and of its mirror image,
        averaged (training sees random flips instead).
        """
        batch = faces.shape[0]
        if self.mirror_average and not self.training:
            faces = torch.cat([faces, faces.flip(-1)])
        x = self.body(self.stem(faces))
        features = self.head(self.dropout(x.mean(dim=(2, 3))))
        if self.mirror_average and not self.training:
            features = 0.5 * (features[:batch] + features[batch:])
        return features


def reparameterise(model: nn.Module) -> nn.Module:
    """A deploy-form copy of `model` (in eval mode); the original keeps training unchanged."""
    deployed = copy.deepcopy(model).eval()
    for module in deployed.modules():
        if isinstance(module, (RepVGGBlock, Stem)):
            module.reparameterise()
    return deployed
