"""Encoder backbones: an image batch (Nx3xHxW float32, preprocessed) -> features (NxD).

- ``resnet18``: ResNet-18 (He et al. 2016) with the CIFAR stem (3x3 stride-1 conv, no max-pool), as
  used by SimSiam's CIFAR experiments (Chen & He 2021, Sec. 4 / appendix D); D = 512.
- ``resnet18_w32``: the same with base width 32 instead of 64 (about 4x fewer multiply-adds) for CPU runs;
  D = 256.
- ``wrn28_2``: Wide-ResNet-28-2 (Zagoruyko & Komodakis 2016), the FixMatch/FlexMatch standard; D = 128.
- ``vgg16_bn_cifar``: VGG-16 with batch norm for 32 px inputs (MoBYv2AL's CIFAR encoder); D = 512.
- any torchvision classification model by name (``torchvision:resnet50``), its classifier removed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class CifarResNet(nn.Module):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a 3x3 stride-1 stem and no max-pool. Nx3xHxW -> Nx(8*width)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        net = _narrow_resnet(width)
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()  # type: ignore[assignment]
        net.fc = nn.Identity()  # type: ignore[assignment]
        self.net = net
        self.out_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def _narrow_resnet(width: int) -> ResNet:
    """A ResNet-18 whose four stages have width, 2w, 4w, 8w channels (torchvision hard-codes 64..512)."""
    net = ResNet(BasicBlock, [2, 2, 2, 2])
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    for m in net.modules():  # torchvision's init, repeated for the replaced layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class _WideBasic(nn.Module):
    """Pre-activation wide residual block (BN-ReLU-conv x2), as in the FixMatch reference WRN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut: nn.Module = (nn.Identity() if cin == cout and stride == 1
                                    else nn.Conv2d(cin, cout, 1, stride, 0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.leaky_relu(self.bn1(x), 0.1)
        y = self.conv1(o)
        y = self.conv2(F.leaky_relu(self.bn2(y), 0.1))
        # the shortcut sees the activated input when it projects (FixMatch's WRN does the same)
        return y + (self.shortcut(o) if not isinstance(self.shortcut, nn.Identity) else x)


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs. Nx3xHxW -> Nx(64k)."""

    def __init__(self, depth: int = 28, k: int = 2) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths[1:]):
            for i in range(n):
                layers.append(_WideBasic(cin, cout, 2 if (i == 0 and stage > 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin, momentum=0.001)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.bn(self.blocks(self.conv(x))), 0.1)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class CifarVGG(nn.Module):
    """VGG-16 with batch norm for 32 px inputs, the CIFAR encoder of MoBYv2AL (Caramalau et al. 2022, Sec. 4,
    "Models"): torchvision's vgg16_bn convolutions (13 conv-BN-ReLU, 5 max-pools: 32 px -> 1 px), then a
    global average pool where the ImageNet model has its 7x7 pool and 4096-wide classifier (which on 32 px
    inputs upsamples a 1x1 map and cannot be exported to ONNX). Nx3xHxW (H, W >= 32) -> Nx512."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"], batch_norm=True)  # "D": VGG-16's 13 convolutions
        self.out_dim = 512
        for m in self.modules():  # torchvision's VGG init (its constructor would also build the 4096-wide head)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)  # NxC


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier (random init, nothing downloaded) with its last Linear layer removed."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            valid = ", ".join(torchvision.models.list_models(module=torchvision.models)[:20])
            raise ValueError(f"unknown torchvision model {name!r}; e.g. {valid}, ...")
        net = torchvision.models.get_model(name, weights=None)
        self.out_dim = _strip_classifier(net)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net(x), 1)


def _strip_classifier(net: nn.Module) -> int:
    """Replace the last nn.Linear of ``fc`` / ``classifier`` / ``head(s)`` by Identity; its in_features."""
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(net, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            for i in reversed(range(len(head))):
                if isinstance(head[i], nn.Linear):
                    layer = cast(nn.Linear, head[i])
                    head[i] = nn.Identity()
                    return layer.in_features
    raise ValueError(f"cannot find the classifier of {type(net).__name__} to remove")


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: CifarResNet(64),
    "resnet18_w32": lambda: CifarResNet(32),
    "wrn28_2": lambda: WideResNet(28, 2),
    "vgg16_bn_cifar": CifarVGG,
}
_MIN_SIDE = {"vgg16_bn_cifar": 32}  # the others here downsample 8x (CIFAR stems) or 4x (WRN)


def build_backbone(arch: str) -> nn.Module:
    """A backbone by name (see module docstring); ``torchvision:NAME`` or a bare torchvision name also work.

    The module has an ``out_dim`` attribute: the feature dimension D.
    """
    if arch in BACKBONES:
        return BACKBONES[arch]()
    name = arch.removeprefix("torchvision:")
    try:
        return TorchvisionBackbone(name)
    except ValueError:
        valid = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown arch {arch!r}; valid: {valid}, or torchvision:<model name>") from None


def min_input_side(arch: str) -> int:
    """The smallest square input side (pixels) ``arch`` accepts. torchvision's ImageNet models downsample 32x
    and VGG's fifth max-pool fails below 32 px ("Output size is too small"); the CIFAR-stem networks here
    downsample 8x."""
    return _MIN_SIDE.get(arch, 8) if arch in BACKBONES else 32


def feature_dim(backbone: nn.Module) -> int:
    return int(backbone.out_dim)  # type: ignore[arg-type,unused-ignore]
