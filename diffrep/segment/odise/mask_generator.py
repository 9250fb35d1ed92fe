"""ODISE's mask generator and mask classifier, built from transformers' Mask2Former parts.

    maps (one per tap, high → low resolution)
      ─► StrideFusion: 1×1 conv of each to `width` channels, summed per stride (ODISE's bottleneck + sum)
      ─► Mask2FormerPixelDecoder (multi-scale deformable attention) ─► mask features + 3 scales
      ─► Mask2FormerTransformerModule (masked attention, `queries` queries) ─► mask logits per layer
      ─► grid mask pooling of the mask features under each query's mask (a G×G grid over the mask's
         box), projected, + the query's decoder state ─► MLP ─► unit embedding per query
      ─► TextClassifier: cosine with the text embeddings of category names / learned temperature,
         max over synonyms, plus a learned "null" embedding (no object)       (or ClosedSetClassifier)

Decisions:
- Small by default (width 64, 2 deformable encoder layers, 4 decoder layers, 16 queries: a scene
  holds at most 3 digits and 3 regions); the reference's 256 / 6 / 9 / 100 are `--width 256
  --encoder-layers 6 --decoder-layers 9 --queries 100`. Our decoder layer count is ODISE's; transformers
  counts the initial prediction as one more.
- Parameters are initialised as transformers' `from_pretrained` would (its `_init_weights` applied to
  the Mask2Former parts): built alone, the pixel decoder's `level_embed` is otherwise left uninitialised.
- Every decoder layer's masks are classified (auxiliary losses, as Mask2Former trains).
- Mask pooling keeps the mask's layout: the features under the mask are averaged in each cell of a
  3×3 grid over the mask's bounding box (`pool_grid`; 1 is ODISE's plain mask average). ODISE's
  Stable Diffusion features name a whole object in one pooled vector; a small UNet's do not: a linear
  probe on the pooled features of the true digit masks of the bundled scenes tells the digits apart
  31% of the time (val; chance 10%) with the plain average and 77% with the 3×3 grid. The box is taken
  from the thresholded mask without gradient (as detectors' RoI boxes); the soft mask weights the
  average, so gradients still reach the masks. As in ODISE the query's decoder state is added.
- A teacher-forced class loss beside Mask2Former's (`true_mask_weight`, 2 as its class weight; 0 is
  ODISE's training): each query matched to a true segment is also classified from the features under
  the segment's true mask. Trained on its own predicted masks only, the classifier is stuck: early
  masks locate a digit too loosely to show its shape, so the digit queries' class stays uniform and
  the stuff masks win every pixel (things PQ 0 in every such run on the bundled scenes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import DiffrepError
from ...options import check, option

LOSS_WEIGHTS = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}   # class / mask BCE / dice


@dataclass
class GeneratorConfig:
    width: int = option(64, "channels of the pixel decoder and queries (a multiple of 32)", min=32)
    encoder_layers: int = option(2, "deformable-attention layers of the pixel decoder", min=1)
    decoder_layers: int = option(4, "masked-attention decoder layers", min=1)
    queries: int = option(16, "object queries (at most this many segments per image)", min=1)
    heads: int = option(4, "attention heads", min=1)
    points: int = option(1024, "points sampled per mask in the mask losses (Mask2Former's point loss)", min=16)
    no_object_weight: float = option(0.1, "weight of the null class in the classification loss", above=0)
    true_mask_weight: float = option(2.0, "weight of the teacher-forced class loss: each matched query's state with "
                                          "the features under its true mask (0: off, as ODISE)", min=0)
    pool_grid: int = option(3, "mask pooling averages the features in a G×G grid over the mask's box "
                               "(1: one average under the mask, as ODISE)", min=1)

    def __post_init__(self):
        check(self)
        if self.width % 32:
            raise DiffrepError(f"width {self.width} must be a multiple of 32 (Mask2Former's GroupNorm of 32 groups)")


def mask2former_config(cfg: GeneratorConfig, strides: list[int], classes: int):
    from transformers import Mask2FormerConfig

    w = cfg.width
    return Mask2FormerConfig(
        feature_size=w, mask_feature_size=w, hidden_dim=w, encoder_feedforward_dim=4 * w, dim_feedforward=4 * w,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers + 1, num_attention_heads=cfg.heads,
        num_queries=cfg.queries, feature_strides=list(strides), common_stride=strides[0], num_labels=classes,
        train_num_points=cfg.points, no_object_weight=cfg.no_object_weight, use_auxiliary_loss=True,
        class_weight=LOSS_WEIGHTS["loss_cross_entropy"], mask_weight=LOSS_WEIGHTS["loss_mask"],
        dice_weight=LOSS_WEIGHTS["loss_dice"])


class StrideFusion(nn.Module):
    """Maps of any channels → one `width`-channel map per stride (four strides, high → low resolution)."""

    def __init__(self, channels: list[int], strides: list[int], width: int):
        super().__init__()
        self.strides = sorted(set(strides))
        if len(self.strides) != 4:
            raise ValueError(f"the mask generator reads four strides; the taps give {self.strides}")
        self.tap_strides = list(strides)
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1), nn.GroupNorm(32, width)) for c in channels)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        out = {s: 0 for s in self.strides}
        for proj, stride, x in zip(self.proj, self.tap_strides, maps):
            out[stride] = out[stride] + proj(x.float())
        return [out[s] for s in self.strides]


class MaskGenerator(nn.Module):
    """Multi-scale maps → per decoder layer: mask logits (B×Q×H×W at the finest stride) and unit
    embeddings (B×Q×E) of every query."""

    def __init__(self, channels: list[int], strides: list[int], embed_dim: int, cfg: GeneratorConfig, classes: int):
        super().__init__()
        from transformers.models.mask2former.modeling_mask2former import (Mask2FormerPixelDecoder,
                                                                           Mask2FormerTransformerModule)
        self.cfg = cfg
        self.fusion = StrideFusion(channels, strides, cfg.width)
        self.m2f = mask2former_config(cfg, self.fusion.strides, classes)
        self.pixel_decoder = Mask2FormerPixelDecoder(self.m2f, feature_channels=[cfg.width] * 4)
        self.decoder = Mask2FormerTransformerModule(in_features=cfg.width, config=self.m2f)
        pooled = cfg.pool_grid ** 2 * cfg.width * 5   # the mask features and the four fused maps
        self.pool_proj = nn.Sequential(nn.LayerNorm(pooled), nn.Linear(pooled, cfg.width))
        self.embed = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.ReLU(), nn.Linear(cfg.width, embed_dim))
        _init_like_from_pretrained(self, self.m2f)

    def forward(self, maps: list[torch.Tensor]) -> dict:
        fused = self.fusion(maps)
        pixels = self.pixel_decoder(fused)
        out = self.decoder(list(pixels.multi_scale_features), pixels.mask_features)
        masks = list(out.masks_queries_logits)
        # what is pooled: the mask features and the fused source maps themselves (the diffusion features
        # reach the classifier directly, not only through what the pixel decoder keeps for masks)
        size = pixels.mask_features.shape[-2:]
        pooled_from = torch.cat([pixels.mask_features] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                                          for f in fused], 1)
        states = [h.transpose(0, 1) for h in out.intermediate_hidden_states]   # Q×B×C → B×Q×C, one per layer
        embeddings = [self.embed_masks(pooled_from, m, h) for m, h in zip(masks, states)]
        return {"masks": masks, "embeddings": embeddings, "pooled_from": pooled_from, "states": states}

    def embed_masks(self, features: torch.Tensor, mask_logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B×n×E) of n masks per image: the features pooled under each (the mask's
        appearance and layout), projected, plus its query's decoder state (what masked attention
        gathered over the scene), then the embedding MLP."""
        pooled = mask_pool(features, mask_logits, self.cfg.pool_grid)
        return F.normalize(self.embed(self.pool_proj(pooled) + states), dim=-1)


def mask_pool(features: torch.Tensor, mask_logits: torch.Tensor, grid: int = 1) -> torch.Tensor:
    """The means of B×C×H×W features under each of B×Q×H×W soft masks, one per cell of a grid×grid
    split of the mask's bounding box (where its logit > 0; the whole image if nowhere) → B×Q×(grid²·C),
    cell-major; an empty cell gives zeros."""
    weight = mask_logits.sigmoid()
    if grid > 1:
        on = (mask_logits > 0).detach()
        cell_y = _grid_cells(on.any(-1), grid)                 # B×Q×G×H: which rows fall in each grid row
        cell_x = _grid_cells(on.any(-2), grid)                 # B×Q×G×W
        weight = weight[:, :, None, None] * cell_y[:, :, :, None, :, None] * cell_x[:, :, None, :, None, :]
        weight = weight.flatten(2, 3)                          # B×Q×G²×H×W
    else:
        weight = weight.unsqueeze(2)
    pooled = torch.einsum("bqghw,bchw->bqgc", weight, features) / weight.sum((-1, -2)).unsqueeze(-1).clamp(min=1e-6)
    return pooled.flatten(2)


def _grid_cells(inside: torch.Tensor, grid: int) -> torch.Tensor:
    """B×Q×L booleans (the mask's rows or columns) → B×Q×grid×L: one-hot of the grid cell each
    position of the mask's span [first, last] falls in (all zero outside it)."""
    n = inside.shape[-1]
    found = inside.any(-1, keepdim=True)
    first = torch.where(found, inside.float().argmax(-1, keepdim=True), 0)
    last = torch.where(found, n - 1 - inside.flip(-1).float().argmax(-1, keepdim=True), n - 1)
    pos = torch.arange(n, device=inside.device)
    cell = torch.div((pos - first) * grid, last - first + 1, rounding_mode="floor")   # B×Q×L, in span: 0..grid-1
    return (cell.unsqueeze(-2) == torch.arange(grid, device=inside.device)[:, None]).float()


class TextClassifier(nn.Module):
    """Logits (B×Q×(K+1)) of query embeddings against a vocabulary's name embeddings: cosine over a
    learned temperature (init 1/0.07, CLIP's), the best of a category's synonyms, and a learned null
    embedding as the last class. The vocabulary is an argument: it may change after training."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.null = nn.Parameter(torch.randn(embed_dim) * embed_dim ** -0.5)

    def forward(self, embeddings: torch.Tensor, names: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.clamp(max=math.log(100)).exp()
        per_name = embeddings @ names.T.to(embeddings)                           # B×Q×N
        k = int(owner.max()) + 1
        per_class = per_name.new_full((*per_name.shape[:2], k), -2.0)
        per_class = per_class.scatter_reduce(-1, owner.to(per_name.device).expand_as(per_name), per_name, "amax")
        null = embeddings @ F.normalize(self.null, dim=0)
        return scale * torch.cat([per_class, null.unsqueeze(-1)], -1)


class ClosedSetClassifier(nn.Module):
    """The baseline: a linear layer over the K training categories (+ null); it cannot name others.
    Its rows are learned class vectors in place of the names' embeddings, with the same cosine and
    learned temperature as `TextClassifier`, so that the two differ in what they compare against and in
    nothing else. (A plain `nn.Linear` on the unit embeddings starts with logits near 0.03 and never
    became confident enough for a digit to pass post-processing: val PQ seen 31.0, things 0.)"""

    def __init__(self, embed_dim: int, classes: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.weight = nn.Parameter(torch.randn(classes + 1, embed_dim) * embed_dim ** -0.5)

    def forward(self, embeddings: torch.Tensor, names=None, owner=None) -> torch.Tensor:
        scale = self.log_scale.clamp(max=math.log(100)).exp()
        return scale * embeddings @ F.normalize(self.weight, dim=-1).T


class PanopticLoss(nn.Module):
    """Mask2Former's loss (Hungarian matching by scipy, class / mask BCE / dice weighted 2 / 5 / 5)
    over every decoder layer."""

    def __init__(self, generator: MaskGenerator):
        super().__init__()
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss
        self.loss = Mask2FormerLoss(generator.m2f, LOSS_WEIGHTS)

    def forward(self, masks: list, logits: list, mask_labels: list, class_labels: list) -> tuple[torch.Tensor, dict]:
        aux = [{"masks_queries_logits": m, "class_queries_logits": c} for m, c in zip(masks[:-1], logits[:-1])]
        parts = self.loss(masks[-1], logits[-1], mask_labels, class_labels, auxiliary_predictions=aux)
        total = sum(LOSS_WEIGHTS[k.rsplit("_", 1)[0] if k not in LOSS_WEIGHTS else k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items() if k in LOSS_WEIGHTS}

    def true_masks(self, generator: MaskGenerator, classify, out: dict, mask_labels: list,
                   class_labels: list) -> torch.Tensor:
        """The teacher-forced class loss: each query matched (last layer) to a true segment is
        classified with its own state but the features under the segment's true mask, so the
        classifier learns what the categories look like before the predicted masks are sharp enough
        to show it. `classify`: embeddings → logits (the model's classifier with the training names)."""
        indices = self.loss.matcher(out["masks"][-1], out["logits"][-1], mask_labels, class_labels)
        features, states = out["pooled_from"], out["states"][-1]
        losses, count = [], 0
        for b, (query, target) in enumerate(indices):
            if len(target) == 0:
                continue
            true = F.interpolate(mask_labels[b][target][None].float(), size=features.shape[-2:], mode="area")
            logits = torch.where(true > 0.25, 20.0, -20.0)   # a thin stroke keeps its pixels at the lower side
            embedded = generator.embed_masks(features[b:b + 1], logits, states[b:b + 1, query])
            losses.append(F.cross_entropy(classify(embedded)[0], class_labels[b][target], reduction="sum"))
            count += len(target)
        return sum(losses) / count if count else features.new_zeros(())


def _init_like_from_pretrained(model: nn.Module, config) -> None:
    """transformers' Mask2Former initialisation, applied to its parts inside `model` (and to the
    decoder's query and level embeddings), nothing else."""
    from transformers.models.mask2former import modeling_mask2former as m2f

    parts = (m2f.Mask2FormerTransformerModule, m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
             m2f.Mask2FormerMaskedAttentionDecoderLayer, m2f.Mask2FormerPixelDecoder, m2f.Mask2FormerPredictionBlock)
    holder = SimpleNamespace(config=config)
    for name, module in model.named_modules():
        if isinstance(module, parts) or (isinstance(module, nn.Embedding) and name.startswith("decoder.")):
            m2f.Mask2FormerPreTrainedModel._init_weights(holder, module)
