"""Classification heads on frozen feature maps (GDC's light heads and DifFormer's fusion), the CNN
trained from scratch they are compared with, and their scoring (their training: `heads.recipe`).

Every head takes a list of maps (one per feature cell, each B×C×h×w; the linear, MLP and CNN heads
take one) and returns B×classes logits. Inputs are normalised without learned parameters first
(`BatchNorm2d(affine=False)` for the pooled heads, a LayerNorm over the whole C×h×w map for the
attention heads), because diffusion activations differ in scale by orders of magnitude between
blocks and noise levels, and one learning-rate grid needs them comparable.

- `linear` (p): adaptive average pool to p×p, flatten, one Linear.
- `mlp` (p): the same, then Linear → ReLU → Linear (hidden 1,024; no norm, no dropout).
- `cnn`: two 3×3 convolutions (the second with stride 2) of `width` channels with BatchNorm and
  ReLU, global average pool, Linear: a small convolutional head that sees the spatial layout the
  pooled heads average away. On raw pixels `cnn` is instead `ImageCNN`, five convolutions trained
  from scratch on the whole image: the opponent a reviewer accepts.
- `attention`: each map pooled to at most 16×16, LayerNorm over C×h×w, 1×1 conv to `width`
  (the reference uses 1,024), one token per position plus a learned position embedding (the
  reference has none: `positions=False`); a zero-initialised CLS token; `depth` pre-norm transformer
  blocks (8 heads, MLP ratio 4, GELU, `dropout` 0 by default); CLS → Linear.
- `fusion` (DifFormer): the attention head over several cells: for each noise level the tokens of
  all its blocks are concatenated behind one CLS token and passed through one transformer shared by
  every level; the levels' CLS outputs are concatenated → Linear. The attention head is fusion over
  one block at one level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .recipe import evaluate

HEADS = ("linear", "mlp", "cnn", "attention", "fusion", "feedback")   # feedback: classify.diffeed
MAX_TOKEN_SIDE = 16


class PooledHead(nn.Module):
    """`linear` / `mlp`: normalise, average-pool one map to p×p, flatten, Linear (→ ReLU → Linear)."""

    def __init__(self, channels: int, pool: int, classes: int, hidden: int | None = None):
        super().__init__()
        self.pool = pool
        self.norm = nn.BatchNorm2d(channels, affine=False)
        width = channels * pool * pool
        self.layers = nn.Linear(width, classes) if hidden is None else \
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.norm(maps[0]), self.pool)
        return self.layers(x.flatten(1))


class ConvHead(nn.Module):
    """`cnn`: conv3×3 → BN → ReLU → conv3×3/2 → BN → ReLU → global average pool → Linear."""

    def __init__(self, channels: int, classes: int, width: int = 128):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.layers = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(self.norm(maps[0]))


class ImageCNN(nn.Module):
    """`cnn` on raw pixels: a CNN trained from scratch on the whole image, the opponent a reviewer
    accepts: five 3×3 convolutions with BatchNorm and ReLU (32, 32, max-pool, 64, 64, max-pool, 128),
    global average pool, Linear. It reads the pixel source's patches (space-to-depth by `factor`) and
    puts the image back together first. While training it shifts each image by up to ±`shift` pixels
    (zero fill), its usual augmentation; the heads on features get no such help, which can only
    favour this opponent."""

    def __init__(self, channels: int, factor: int, classes: int, shift: int = 2):
        super().__init__()
        self.factor, self.shift = factor, shift
        image_channels = channels // (factor * factor)
        widths = [image_channels, 32, 32, "pool", 64, 64, "pool", 128]
        layers, c = [], image_channels
        for w in widths[1:]:
            if w == "pool":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.layers = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = F.pixel_shuffle(maps[0], self.factor) if self.factor > 1 else maps[0]
        if self.training and self.shift:
            x = random_shift(x, self.shift)
        return self.layers(x)


def random_shift(x: torch.Tensor, most: int) -> torch.Tensor:
    """Each image of B×C×H×W translated by its own random (dy, dx) in [-most, most], zero fill."""
    b, _, h, w = x.shape
    padded = F.pad(x, (most, most, most, most))
    dy, dx = (torch.randint(0, 2 * most + 1, (b,), device=x.device) for _ in range(2))
    rows = (torch.arange(h, device=x.device) + dy[:, None])[:, None, :, None]     # B×1×H×1
    cols = (torch.arange(w, device=x.device) + dx[:, None])[:, None, None, :]     # B×1×1×W
    return padded[torch.arange(b, device=x.device)[:, None, None, None],
                  torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]


def token_side(side: int, most: int = MAX_TOKEN_SIDE) -> int:
    return min(side, most)


def pool_to_token_grid(x: torch.Tensor, most: int = MAX_TOKEN_SIDE) -> torch.Tensor:
    """B×C×h×w average-pooled to at most `most`×`most` (smaller maps unchanged): what the heads read."""
    return F.adaptive_avg_pool2d(x, (token_side(x.shape[-2], most), token_side(x.shape[-1], most)))


class FusionHead(nn.Module):
    """`attention` / `fusion`: maps of `blocks` blocks at `levels` noise levels, given level by level
    (maps[l·blocks + b] is block b at level l), each of shape (C_b, h_b, w_b) in `shapes`."""

    def __init__(self, shapes: list[tuple[int, int, int]], levels: int, classes: int, width: int = 256,
                 depth: int = 2, heads: int = 8, positions: bool = True, dropout: float = 0.0):
        super().__init__()
        self.levels, self.blocks = levels, len(shapes)
        sides = [(token_side(h), token_side(w)) for _, h, w in shapes]
        self.sides = sides
        # a learned embedding per token position of each block (shared by the levels, as the
        # projection): without it the transformer sees a bag of tokens and cannot tell where a stroke is
        self.positions = nn.ParameterList(nn.Parameter(torch.randn(1, h * w, width) * 0.02) for h, w in sides) \
            if positions else None
        # one LayerNorm and projection per block, shared by the levels: a block's features at another
        # noise level are the same kind of features
        self.norms = nn.ModuleList(nn.LayerNorm([c, h, w]) for (c, _, _), (h, w) in zip(shapes, sides))
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c, _, _ in shapes)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(width)
        self.classify = nn.Linear(levels * width, classes)

    def no_weight_decay(self) -> list[nn.Parameter]:
        return [self.cls, *(self.positions or [])]

    def tokens(self, x: torch.Tensor, b: int) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, self.sides[b])
        tokens = self.project[b](self.norms[b](x)).flatten(2).transpose(1, 2)   # B×hw×width
        return tokens if self.positions is None else tokens + self.positions[b]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if len(maps) != self.levels * self.blocks:
            raise ValueError(f"expected {self.levels}×{self.blocks} maps, got {len(maps)}")
        n = len(maps[0])
        outs = []
        for level in range(self.levels):
            group = maps[level * self.blocks:(level + 1) * self.blocks]
            seq = torch.cat([self.cls.expand(n, -1, -1)] + [self.tokens(x, b) for b, x in enumerate(group)], 1)
            outs.append(self.out_norm(self.transformer(seq)[:, 0]))
        return self.classify(torch.cat(outs, 1))


def make_head(kind: str, shapes: list[tuple[int, int, int]], levels: int, classes: int, pool: int = 1,
              width: int = 256, depth: int = 2, pixel_factor: int | None = None, positions: bool = True,
              dropout: float = 0.0) -> nn.Module:
    """A head of `kind` (see HEADS) over maps of `shapes` (one per block) at `levels` noise levels.
    `pixel_factor`: the maps are raw pixels cut into patches of that side (`PixelPatches`), and `cnn`
    is then the CNN trained from scratch on the whole image (`ImageCNN`)."""
    if kind in ("linear", "mlp", "cnn") and (len(shapes), levels) != (1, 1):
        raise ValueError(f"the {kind} head reads one map; got {len(shapes)} blocks × {levels} levels")
    c = shapes[0][0]
    if kind == "linear":
        return PooledHead(c, pool, classes)
    if kind == "mlp":
        return PooledHead(c, pool, classes, hidden=1024)
    if kind == "cnn" and pixel_factor is not None:
        return ImageCNN(c, pixel_factor, classes)
    if kind == "cnn":
        return ConvHead(c, classes, width=min(width, 128))
    if kind in ("attention", "fusion"):
        return FusionHead(shapes, levels, classes, width=width, depth=depth, positions=positions, dropout=dropout)
    raise ValueError(f"unknown head {kind!r}; one of {', '.join(HEADS)}")


def parameter_count(head: nn.Module) -> int:
    return sum(p.numel() for p in head.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- scoring
# (training: `heads.recipe`)


def accuracy(head: nn.Module, batches, device="cpu", autocast_dtype=None) -> float:
    """Top-1 accuracy (torchmetrics) of `head` over `batches`: how test is scored."""
    return evaluate(head, batches, device, autocast_dtype)[0]
