"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1) as a torch trunk.

The topology is dlib's ``anet_type`` (examples/dnn_face_recognition_ex.cpp), read innermost first:

    input_rgb_image_sized<150> -> con<32,7,7,2,2> -> affine -> relu -> max_pool<3,3,2,2>
    -> alevel4 (3x ares<32>) -> alevel3 (ares_down<64>, 3x ares<64>) -> alevel2 (ares_down<128>, 2x ares<128>)
    -> alevel1 (ares_down<256>, 2x ares<256>) -> alevel0 (ares_down<256>) -> avg_pool_everything -> fc_no_bias<128>

Details taken from dlib's source (dlib/dnn/layers.h, input.h, cpu_dlib.cpp), each of which changes the output:

- con_ and max_pool_ pad by (kernel // 2) only at stride 1; a strided layer has no padding at all.
- ares_down's skip is a 2x2 average pool, stride 2 (no padding), of the block's input.
- add_prev adds two tensors of different shapes by zero-extending each to the larger size in every
  dimension, aligned at channel 0 and the top-left corner (tt::add). At 150 px this happens twice:
  alevel1's strided conv gives 3x3 while the pooled skip gives 4x4, and alevel0's 1x1 meets a 2x2 skip;
  the 32 -> 64 (etc.) channel steps zero-extend the skip's channels.
- affine_ is y = gamma * x + beta per channel (BatchNorm folded when training ended).
- input_rgb_image_sized converts an RGB pixel p (0..255) to (p - mean_c) / 256 with dlib's per-channel
  means 122.782, 117.001, 104.298, channel planes in R, G, B order.
- Filters are stored (filters, in channels, rows, cols), torch's layout; both compute a cross-correlation.

``forward`` returns the 256 globally pooled features; the 128-d face embedding (``embed``, dlib's
fc_no_bias) is only used by ``embedding`` (the converter's check against dlib).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .preprocess import IMAGENET_MEAN, IMAGENET_STD

DLIB_SIZE = 150  # input_rgb_image_sized<150>: the network is defined, and was trained, at 150 x 150
DLIB_MEAN = (122.782, 117.001, 104.298)  # input_rgb_image_sized's per-channel means, R, G, B on 0..255
DLIB_DIVISOR = 256.0  # ... and what it divides by after subtracting them
FEATURES = 256
EMBEDDING = 128
# (stage, channels, blocks); the first block of every stage but alevel4 is an ares_down (stride 2)
LEVELS = (("alevel4", 32, 3), ("alevel3", 64, 4), ("alevel2", 128, 3), ("alevel1", 256, 3), ("alevel0", 256, 1))
STAGES = ("input", "conv1", "affine1", "relu", "maxpool", *(name for name, _, _ in LEVELS))
# Grad-CAM targets: the last block of the 256-channel stages (4x4 and 2x2 maps), then alevel2 (8x8)
CAM_LAYERS = {"alevel1": "alevel1.-1", "alevel0": "alevel0.-1", "alevel2": "alevel2.-1"}


class Affine(nn.Module):
    """dlib's affine_ layer, y = weight * x + bias per channel, with both learnable for fine-tuning.

    Not BatchNorm: the file holds only the folded scale and shift (gamma / sqrt(var + eps) and
    beta - mean * that), no batch statistics. A BatchNorm in training mode normalises by each batch's own
    statistics, which are not those the folded values assume, so the first training step would replace the
    pretrained function; it would also make an image's output depend on the rest of its batch (and on how
    DDP splits it). A learnable per-channel scale and shift starts as exactly dlib's network."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


class DlibInput(nn.Module):
    """Fixed (buffers, not learnt): normalised RGB, ``(p / 255 - mean) / std``, to dlib's input scaling
    ``(p - DLIB_MEAN) / 256``, resized to 150 x 150 when it is another size. The network is only defined
    from 103 px up (smaller inputs leave a strided 3x3 conv less than 3 px to work on) and its filters saw
    faces at 150 px, so every input is brought to that size: bilinear, antialiased when shrinking."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 size: int = DLIB_SIZE):
        super().__init__()
        mean_t, std_t, dlib_mean = (torch.tensor(v, dtype=torch.float64) for v in (mean, std, DLIB_MEAN))
        # p = 255 * (x * std + mean), and dlib wants (p - dlib_mean) / 256
        self.register_buffer("scale", (255 * std_t / DLIB_DIVISOR).float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((255 * mean_t - dlib_mean) / DLIB_DIVISOR).float().view(1, 3, 1, 1),
                             persistent=False)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, x, self.scale)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=max(x.shape[-2:]) > self.size)
        return x


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum of two tensors, each zero-extended (channels, then bottom and right)
    to the larger of the two sizes in every dimension."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    return _extend(a, c, h, w) + _extend(b, c, h, w)


def _extend(t: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))


class Residual(nn.Module):
    """ares<N> (``down`` False) or ares_down<N> (True): relu(block(x) + skip(x)), where block is
    con3x3(/2) -> affine -> relu -> con3x3 -> affine and skip is x, or for ares_down x average-pooled 2x2/2."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=0 if down else 1)  # con_ pads only at stride 1
        self.affine1 = Affine(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.affine2 = Affine(cout)
        self.skip = nn.AvgPool2d(2, 2) if down else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(self.relu1(self.affine1(self.conv1(x)))))
        return self.relu(add_prev(y, self.skip(x)))


class DlibResNet(nn.Module):
    """The trunk: normalised RGB in, the 256 globally average-pooled features out. ``weights`` is there for
    the model factory, which builds every trunk with weights=None; pretrained weights come from
    agegender.models.dlib_convert and model.load_trunk."""

    def __init__(self, weights: None = None):
        super().__init__()
        self.input = DlibInput()
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine1 = Affine(32)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2)  # max_pool_ pads only at stride 1
        cin = 32
        for i, (name, channels, blocks) in enumerate(LEVELS):
            down = i > 0
            layers = [Residual(cin, channels, down)] + [Residual(channels, channels, False) for _ in range(blocks - 1)]
            self.add_module(name, nn.Sequential(*layers))
            cin = channels
        self.embed = nn.Linear(FEATURES, EMBEDDING, bias=False)  # fc_no_bias<128>: not part of forward
        self._init_weights()

    def _init_weights(self) -> None:
        """For training from scratch (a converted file replaces all of it): He-initialised convolutions,
        and each block's last affine at zero, so every residual block starts as its skip path and the
        un-normalised network's activations cannot grow with depth."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, Residual):
                nn.init.zeros_(m.affine2.weight)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """alevel0's output: N x 256 x 2 x 2."""
        x = self.maxpool(self.relu(self.affine1(self.conv1(self.input(x)))))
        for name, _, _ in LEVELS:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.feature_map(x), 1), 1)  # avg_pool_everything

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's 128-d face descriptor (not normalised: dlib compares raw descriptors, same person < 0.6)."""
        return self.embed(self(x))
