"""MODNet portrait matting network (Ke et al., "MODNet: Real-Time Trimap-Free Portrait Matting via
Objective Decomposition", AAAI 2022).

A pure ``nn.Module`` re-implementation whose state dict matches the published checkpoint
``modnet_photographic_portrait_matting.ckpt`` key for key (after the DataParallel ``module.``
prefix is stripped, see :mod:`compositor.networks.modnet_checkpoint`) and whose eval-mode output
matches the reference implementation (github.com/ZHKKKe/MODNet, ``src/models/modnet.py``).

Three branches share one MobileNetV2 encoder:

* the low-resolution (LR) branch predicts a coarse semantic mask at 1/16 scale;
* the high-resolution (HR) branch predicts the boundary detail at full scale;
* the fusion (F) branch combines both into the alpha matte.

In inference mode only the fusion branch's matte is computed; the semantic and detail heads exist
for training supervision.

Input contract: RGB normalised to [-1, 1] (``(x - 0.5) / 0.5`` of a [0, 1] image), height and width
multiples of 32. The export wrapper owns the normalisation; this module does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MODNet",
    "MobileNetV2Backbone",
    "IBNorm",
    "Conv2dIBNormRelu",
    "SEBlock",
    "LRBranch",
    "HRBranch",
    "FusionBranch",
]

# Every resolution change in MODNet goes through this one call so that eager, ONNX and TensorRT
# agree: bilinear, half-pixel centres (align_corners=False), no antialiasing, and a *scale factor*
# rather than an output size. With a scale factor PyTorch maps coordinates with 1/scale, which is
# what the reference does; an explicit size gives the same result only when the input is divisible.


def _resize(x: Tensor, scale_factor: float) -> Tensor:
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)


# -------------------------------------------------------------------------------------------------
# Building blocks
# -------------------------------------------------------------------------------------------------


class IBNorm(nn.Module):
    """Batch norm on the first half of the channels, instance norm on the second half.

    Batch statistics carry dataset-level appearance, instance statistics make the other half
    independent of the image's global colour and contrast; MODNet uses both side by side.

    Args:
        channels: number of input (and output) channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bnorm_channels = channels // 2
        self.inorm_channels = channels - self.bnorm_channels
        self.bnorm = nn.BatchNorm2d(self.bnorm_channels, affine=True)
        # No affine parameters and no running statistics, so nothing of it appears in the state
        # dict; it normalises with the statistics of each image even in eval mode.
        self.inorm = nn.InstanceNorm2d(self.inorm_channels, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` [B, C, H, W]; returns a tensor of the same shape."""
        # The reference slices the instance half as x[:, inorm_channels:], which equals this
        # split for the even channel counts MODNet uses (every IBNorm here has an even width
        # when hr_channels is even) and stays correct for odd ones.
        batch_part, instance_part = torch.split(
            x, [self.bnorm_channels, self.inorm_channels], dim=1
        )
        return torch.cat((self.bnorm(batch_part), self.inorm(instance_part)), dim=1)


class Conv2dIBNormRelu(nn.Module):
    """Conv2d, optionally followed by :class:`IBNorm` and ReLU.

    The layers live in a ``Sequential`` named ``layers`` because the checkpoint's keys are
    ``<name>.layers.0.weight`` (conv) and ``<name>.layers.1.bnorm.*`` (norm).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: zero padding on each side.
        with_ibn: append an :class:`IBNorm`.
        with_relu: append a ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        with_ibn: bool = True,
        with_relu: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        ]
        if with_ibn:
            layers.append(IBNorm(out_channels))
        if with_relu:
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv (+ norm + ReLU) to ``x``."""
        return self.layers(x)


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al., CVPR 2018).

    Args:
        channels: input (and output) channels.
        reduction: bottleneck ratio of the two fully connected layers.
    """

    def __init__(self, channels: int, reduction: int = 1) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Indices 0 and 2 hold the weights, matching the checkpoint keys ``fc.0`` and ``fc.2``.
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Rescale each channel of ``x`` [B, C, H, W] by a weight computed from the whole image."""
        weights = self.fc(self.pool(x).flatten(1))
        return x * weights[:, :, None, None]


# -------------------------------------------------------------------------------------------------
# MobileNetV2 encoder
# -------------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection (Sandler et al.).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depthwise convolution (1 or 2).
        expansion: width of the hidden layer relative to ``in_channels``; with 1 the expansion
            convolution is omitted, which shifts the indices inside ``conv`` (as in the checkpoint).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_channels * expansion)
        self.use_residual = stride == 1 and in_channels == out_channels

        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block, with the identity shortcut where shapes allow it."""
        out = self.conv(x)
        return x + out if self.use_residual else out


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int
) -> nn.Sequential:
    """Dense conv + BatchNorm + ReLU6: the stem and the last layer of MobileNetV2."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor (width 1.0, no classifier), as a flat ``features`` Sequential.

    ``features`` has 19 entries: the stride-2 stem, 17 inverted residual blocks and the 1x1
    conv to 1280 channels; its indices are part of the checkpoint keys.

    Args:
        in_channels: channels of the input image.
        expansion: hidden-layer expansion of the inverted residual blocks (except the first).
    """

    # (expansion or None for the default, output channels, repeats, stride of the first repeat)
    _STAGES: tuple[tuple[int | None, int, int, int], ...] = (
        (1, 16, 1, 1),
        (None, 24, 2, 2),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )
    STEM_CHANNELS = 32
    LAST_CHANNELS = 1280

    def __init__(self, in_channels: int = 3, expansion: int = 6) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_relu6(in_channels, self.STEM_CHANNELS, 3, stride=2)]
        channels = self.STEM_CHANNELS
        for stage_expansion, out_channels, repeats, first_stride in self._STAGES:
            for i in range(repeats):
                blocks.append(
                    InvertedResidual(
                        channels,
                        out_channels,
                        stride=first_stride if i == 0 else 1,
                        expansion=expansion if stage_expansion is None else stage_expansion,
                    )
                )
                channels = out_channels
        blocks.append(_conv_bn_relu6(channels, self.LAST_CHANNELS, 1, stride=1))
        self.features = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Return the 1280-channel features at 1/32 scale."""
        return self.features(x)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 encoder returning the features at the end of each of its five strides.

    The network sits under ``model`` because the checkpoint keys are ``backbone.model.features.*``.

    Args:
        in_channels: channels of the input image.

    Attributes:
        enc_channels: channels of the features at 1/2, 1/4, 1/8, 1/16 and 1/32 scale.
    """

    # ``features`` indices at which the resolution is about to halve again (or the network ends).
    _STAGE_ENDS = (2, 4, 7, 14, 19)
    enc_channels = (16, 24, 32, 96, 1280)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.model = MobileNetV2(in_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Encode ``x`` [B, C, H, W]; returns features at 1/2, 1/4, 1/8, 1/16 and 1/32 scale."""
        outputs = []
        start = 0
        for end in self._STAGE_ENDS:
            for block in self.model.features[start:end]:
                x = block(x)
            outputs.append(x)
            start = end
        return outputs


# -------------------------------------------------------------------------------------------------
# Branches
# -------------------------------------------------------------------------------------------------


class LRBranch(nn.Module):
    """Low-resolution branch: encoder, SE attention and a decoder to 1/8 scale.

    The branch holds the *same* backbone module as :class:`MODNet` (not a copy); that is why the
    official state dict lists the encoder twice, as ``backbone.*`` and ``lr_branch.backbone.*``.

    Args:
        backbone: the shared encoder.
    """

    def __init__(self, backbone: MobileNetV2Backbone) -> None:
        super().__init__()
        enc_channels = backbone.enc_channels
        self.backbone = backbone
        self.se_block = SEBlock(enc_channels[4], reduction=4)
        self.conv_lr16x = Conv2dIBNormRelu(enc_channels[4], enc_channels[3], 5, padding=2)
        self.conv_lr8x = Conv2dIBNormRelu(enc_channels[3], enc_channels[2], 5, padding=2)
        self.conv_lr = Conv2dIBNormRelu(
            enc_channels[2], 1, 3, stride=2, padding=1, with_ibn=False, with_relu=False
        )

    def forward(
        self, image: Tensor, inference: bool
    ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """Encode ``image`` and decode the low-resolution features.

        Returns:
            ``(semantic, lr8x, enc2x, enc4x)``: the 1/16-scale semantic mask (None in inference),
            the 1/8-scale decoder features and the encoder features at 1/2 and 1/4 scale, which
            the high-resolution branch consumes.
        """
        enc2x, enc4x, _, _, enc32x = self.backbone(image)
        lr16x = self.conv_lr16x(_resize(self.se_block(enc32x), 2))
        lr8x = self.conv_lr8x(_resize(lr16x, 2))
        semantic = None if inference else torch.sigmoid(self.conv_lr(lr8x))
        return semantic, lr8x, enc2x, enc4x


class HRBranch(nn.Module):
    """High-resolution branch: refines the boundary at 1/4 and 1/2 scale from image and encoder.

    Args:
        hr_channels: width of the branch.
        enc_channels: channels of the encoder features (see :class:`MobileNetV2Backbone`).
    """

    def __init__(self, hr_channels: int, enc_channels: tuple[int, ...]) -> None:
        super().__init__()
        hr = hr_channels
        self.tohr_enc2x = Conv2dIBNormRelu(enc_channels[0], hr, 1)
        self.conv_enc2x = Conv2dIBNormRelu(hr + 3, hr, 3, stride=2, padding=1)
        self.tohr_enc4x = Conv2dIBNormRelu(enc_channels[1], hr, 1)
        self.conv_enc4x = Conv2dIBNormRelu(2 * hr, 2 * hr, 3, padding=1)
        self.conv_hr4x = nn.Sequential(
            Conv2dIBNormRelu(3 * hr + 3, 2 * hr, 3, padding=1),
            Conv2dIBNormRelu(2 * hr, 2 * hr, 3, padding=1),
            Conv2dIBNormRelu(2 * hr, hr, 3, padding=1),
        )
        self.conv_hr2x = nn.Sequential(
            Conv2dIBNormRelu(2 * hr, 2 * hr, 3, padding=1),
            Conv2dIBNormRelu(2 * hr, hr, 3, padding=1),
            Conv2dIBNormRelu(hr, hr, 3, padding=1),
            Conv2dIBNormRelu(hr, hr, 3, padding=1),
        )
        self.conv_hr = nn.Sequential(
            Conv2dIBNormRelu(hr + 3, hr, 3, padding=1),
            Conv2dIBNormRelu(hr, 1, 1, with_ibn=False, with_relu=False),
        )

    def forward(
        self, image: Tensor, enc2x: Tensor, enc4x: Tensor, lr8x: Tensor, inference: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Fuse image, encoder and LR features at high resolution.

        Returns:
            ``(detail, hr2x)``: the full-scale boundary detail (None in inference) and the
            1/2-scale features that the fusion branch consumes.
        """
        # The image is downsampled by bilinear interpolation, not area averaging: at 1/4 each
        # output pixel is the mean of the two middle pixels of its 4x4 cell. Kept for parity.
        image2x = _resize(image, 1 / 2)
        image4x = _resize(image, 1 / 4)

        enc2x = self.tohr_enc2x(enc2x)
        hr4x = self.conv_enc2x(torch.cat((image2x, enc2x), dim=1))
        hr4x = self.conv_enc4x(torch.cat((hr4x, self.tohr_enc4x(enc4x)), dim=1))
        hr4x = self.conv_hr4x(torch.cat((hr4x, _resize(lr8x, 2), image4x), dim=1))
        hr2x = self.conv_hr2x(torch.cat((_resize(hr4x, 2), enc2x), dim=1))

        detail = None
        if not inference:
            detail = torch.sigmoid(self.conv_hr(torch.cat((_resize(hr2x, 2), image), dim=1)))
        return detail, hr2x


class FusionBranch(nn.Module):
    """Fusion branch: merges LR semantics and HR detail into the full-resolution alpha matte.

    Args:
        hr_channels: width of the branch.
        enc_channels: channels of the encoder features (see :class:`MobileNetV2Backbone`).
    """

    def __init__(self, hr_channels: int, enc_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.conv_lr4x = Conv2dIBNormRelu(enc_channels[2], hr_channels, 5, padding=2)
        self.conv_f2x = Conv2dIBNormRelu(2 * hr_channels, hr_channels, 3, padding=1)
        self.conv_f = nn.Sequential(
            Conv2dIBNormRelu(hr_channels + 3, hr_channels // 2, 3, padding=1),
            Conv2dIBNormRelu(hr_channels // 2, 1, 1, with_ibn=False, with_relu=False),
        )

    def forward(self, image: Tensor, lr8x: Tensor, hr2x: Tensor) -> Tensor:
        """Return the alpha matte [B, 1, H, W] in [0, 1]."""
        lr2x = _resize(self.conv_lr4x(_resize(lr8x, 2)), 2)
        f2x = self.conv_f2x(torch.cat((lr2x, hr2x), dim=1))
        f = self.conv_f(torch.cat((_resize(f2x, 2), image), dim=1))
        return torch.sigmoid(f)


# -------------------------------------------------------------------------------------------------
# MODNet
# -------------------------------------------------------------------------------------------------


class MODNet(nn.Module):
    """Trimap-free portrait matting network.

    Weights are initialised as in the reference (Kaiming-uniform convolutions with zero bias, unit
    norm scales); loading the published or a project checkpoint is the job of
    :func:`compositor.networks.modnet_checkpoint.load_modnet_checkpoint`.

    Args:
        in_channels: channels of the input image.
        hr_channels: width of the high-resolution and fusion branches.

    Example:
        >>> model = MODNet().eval()
        >>> _, _, matte = model(torch.zeros(1, 3, 64, 96), inference=True)
        >>> tuple(matte.shape)
        (1, 1, 64, 96)
    """

    #: Height and width of the input must be multiples of this (the encoder's total stride);
    #: otherwise the decoder's upsampled features cannot be concatenated with the skips.
    SIZE_MULTIPLE = 32

    def __init__(self, in_channels: int = 3, hr_channels: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hr_channels = hr_channels
        # Recorded so saved weights can rebuild the architecture (networks/weights.py).
        self.hyperparameters = {"in_channels": in_channels, "hr_channels": hr_channels}
        # Registration order matters only for the order of state-dict keys; it follows the
        # official checkpoint (backbone, lr_branch with the backbone again, hr_branch, f_branch).
        self.backbone = MobileNetV2Backbone(in_channels)
        self.lr_branch = LRBranch(self.backbone)
        self.hr_branch = HRBranch(hr_channels, self.backbone.enc_channels)
        self.f_branch = FusionBranch(hr_channels, self.backbone.enc_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # modules() visits the shared backbone once, so it is initialised once.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=0, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self, image: Tensor, inference: bool = True
    ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """Predict the alpha matte of ``image``.

        Args:
            image: RGB [B, 3, H, W] normalised to [-1, 1]; H and W multiples of 32.
            inference: skip the semantic and detail heads, which only training needs.

        Returns:
            ``(semantic, detail, matte)``: semantic mask [B, 1, H/16, W/16], boundary detail
            [B, 1, H, W] (both None when ``inference``) and alpha matte [B, 1, H, W], all in [0, 1].

        Raises:
            ValueError: if the image is not 4-D with ``in_channels`` channels and a size that
                is a multiple of 32.
        """
        self._check_input(image)
        semantic, lr8x, enc2x, enc4x = self.lr_branch(image, inference)
        detail, hr2x = self.hr_branch(image, enc2x, enc4x, lr8x, inference)
        matte = self.f_branch(image, lr8x, hr2x)
        return semantic, detail, matte

    def _check_input(self, image: Tensor) -> None:
        # The reference fails on such inputs too, but deep inside with a torch.cat size error.
        # Under torch.onnx's legacy tracer these checks emit TracerWarnings and are dropped from
        # the graph; torch.export (the default exporter) accepts them, also with dynamic H and W.
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"MODNet expects an image [B, {self.in_channels}, H, W], "
                f"got shape {tuple(image.shape)}"
            )
        height, width = image.shape[-2:]
        if height % self.SIZE_MULTIPLE != 0 or width % self.SIZE_MULTIPLE != 0:
            raise ValueError(
                f"MODNet needs height and width that are multiples of {self.SIZE_MULTIPLE}, "
                f"got {height}x{width}; resize the image first"
            )
