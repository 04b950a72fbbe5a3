"""ResNet-101 "C4" backbone in the MSRA/Caffe style used by bottom-up attention (docs/guide/detector.md).

Differences from torchvision's ResNet that matter for the Caffe weights: the stem max-pool has no
padding and rounds up (Caffe), the stride of a down-sampling block sits in its first 1×1 conv, and
every BatchNorm is a frozen affine with eps 1e-5. Module names follow detectron2
(``stem.conv1``, ``res2.0.conv1.norm``…), so checkpoint keys map one to one.

Batches of differently sized images are zero-padded; to give every image exactly the features it
gets alone, the padded area is zeroed again before every operation that mixes neighbouring
positions (see :class:`ValidMask`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

BN_EPS = 1e-5  # Caffe BatchNorm default; the prototxt never sets it


class ConvBN(nn.Conv2d):
    """Bias-free convolution with a frozen BatchNorm child ``.norm`` (detectron2's naming, so the
    checkpoint keys are ``<name>.weight`` and ``<name>.norm.{weight,bias,running_mean,running_var}``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                         bias=False)
        self.norm = FrozenBatchNorm2d(cout, eps=BN_EPS)

        self._fused: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.norm(super().forward(x))
        # inference: the frozen BN folded into the conv (one pass over the activations instead
        # of three: ~20% of the CPU time); recomputed whenever a weight or statistic changes
        weight, bias = self._fused_params()
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def _fused_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.norm
        tensors = (self.weight, n.weight, n.bias, n.running_mean, n.running_var)
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if self._fused is None or self._fused[0] != key:
            with torch.no_grad():
                scale = n.weight * torch.rsqrt(n.running_var + n.eps)
                weight = self.weight * scale.view(-1, 1, 1, 1)
                bias = n.bias - n.running_mean * scale
            self._fused = (key, weight, bias)
        return self._fused[1], self._fused[2]


def conv_out_size(n: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                  ceil_mode: bool = False) -> int:
    """Output length of a convolution / pooling along one axis (PyTorch's formula)."""
    eff = dilation * (kernel - 1) + 1
    span = n + 2 * padding - eff
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1  # the last window must start inside the input (PyTorch and Caffe agree)
    return out


class ValidMask:
    """Per-image valid extents of a padded batch, tracked through the network's strides.

    ``sizes[i] = (h, w)`` is the size image ``i`` has at the current resolution. ``apply(x)``
    zeroes everything outside it, which is what the convolution padding of a lone image sees.
    ``None`` sizes (all images fill the tensor) make every call a no-op.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]] | None) -> None:
        self.sizes = [tuple(s) for s in sizes] if sizes is not None else None
        self._cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}

    def needed(self, x: torch.Tensor) -> bool:
        if self.sizes is None:
            return False
        return any(h != x.shape[-2] or w != x.shape[-1] for h, w in self.sizes)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if not self.needed(x):
            return x
        key = (x.shape[-2], x.shape[-1], str(x.device), x.dtype)
        mask = self._cache.get(key)
        if mask is None:
            mask = torch.zeros(len(self.sizes), 1, x.shape[-2], x.shape[-1], dtype=x.dtype,
                               device=x.device)
            for i, (h, w) in enumerate(self.sizes):
                mask[i, :, :h, :w] = 1
            self._cache[key] = mask
        return x * mask

    def after(self, kernel: int, stride: int, padding: int, dilation: int = 1,
              ceil_mode: bool = False) -> "ValidMask":
        """The mask for the output of a layer with these parameters."""
        if self.sizes is None or (kernel, stride, padding, dilation) in ((1, 1, 0, 1), (3, 1, 1, 1)):
            return self
        return ValidMask([(conv_out_size(h, kernel, stride, padding, dilation, ceil_mode),
                           conv_out_size(w, kernel, stride, padding, dilation, ceil_mode))
                          for h, w in self.sizes])


class Bottleneck(nn.Module):
    """Caffe ResNet bottleneck: 1×1 (carries the stride) → 3×3 (dilation) → 1×1, projection shortcut."""

    def __init__(self, cin: int, bottleneck: int, cout: int, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        self.shortcut = ConvBN(cin, cout, 1, stride=stride) if (cin != cout or stride != 1) else None
        self.conv1 = ConvBN(cin, bottleneck, 1, stride=stride)
        self.conv2 = ConvBN(bottleneck, bottleneck, 3, padding=dilation, dilation=dilation)
        self.conv3 = ConvBN(bottleneck, cout, 1)
        self.stride = stride

    def forward(self, x: torch.Tensor, mask: ValidMask | None = None) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if mask is not None:
            # the 3×3 mixes neighbours: zero the padded area as a lone image's conv padding would
            mask = mask.after(1, self.stride, 0)
            out = mask.apply(out)
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + identity)


def make_stage(blocks: int, cin: int, bottleneck: int, cout: int, first_stride: int,
               dilation: int = 1) -> nn.Sequential:
    """A ResNet stage; only the first block changes channels / stride."""
    layers = [Bottleneck(cin, bottleneck, cout, stride=first_stride, dilation=dilation)]
    layers += [Bottleneck(cout, bottleneck, cout, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CaffeStem(nn.Module):
    """conv 7×7/2 pad 3 (no bias) → frozen BN → ReLU → max-pool 3×3/2, pad 0, ceil mode (Caffe)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBN(3, 64, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor, mask: ValidMask | None = None) -> tuple[torch.Tensor, ValidMask | None]:
        x = F.relu_(self.conv1(x))
        if mask is not None:
            mask = mask.after(7, 2, 3)
            x = mask.apply(x)  # values are >= 0 after ReLU, so zeros never win a max window
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        if mask is not None:
            mask = mask.after(3, 2, 0, ceil_mode=True)
        return x, mask


class ResNetC4(nn.Module):
    """Stem + res2..res4 of ResNet-101; output: res4, 1024 channels, stride 16."""

    out_channels = 1024
    stride = 16

    def __init__(self, depth_res4: int = 23) -> None:
        super().__init__()
        self.stem = CaffeStem()
        self.res2 = make_stage(3, 64, 64, 256, first_stride=1)
        self.res3 = make_stage(4, 256, 128, 512, first_stride=2)
        self.res4 = make_stage(depth_res4, 512, 256, 1024, first_stride=2)

    def forward(self, images: torch.Tensor,
                sizes: Sequence[tuple[int, int]] | None = None) -> tuple[torch.Tensor, ValidMask]:
        """Run on a (padded) batch; ``sizes`` are the images' real (h, w) in ``images``.

        Returns the res4 map and the valid mask at its resolution (padded area zeroed).
        """
        mask = ValidMask(sizes)
        x, mask = self.stem(images, mask)
        for stage in (self.res2, self.res3, self.res4):
            for block in stage:
                x = block(x, mask)
                mask = mask.after(1, block.stride, 0)
                x = mask.apply(x) if block is stage[-1] else x
        return x, mask


def make_res5(dilation: int = 2) -> nn.Sequential:
    """res5 as the BUTD test net runs it on 14×14 pooled RoIs: stride 1, 3×3 dilation 2 (docs/guide/detector.md)."""
    return make_stage(3, 1024, 512, 2048, first_stride=1, dilation=dilation)
