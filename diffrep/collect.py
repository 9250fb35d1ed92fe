"""Running the featurizer over a whole image set in batches: one encode per batch, one forward per
(batch, t) with taps on every requested block, optional adaptive average pooling, progress bar."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import ImageSet, match_channels
from .featstore import feature_key
from .featurizer import Featurizer


def fit_images(images: torch.Tensor, channels: int, size: int, what: str = "images") -> torch.Tensor:
    """Convert a data set to what a model takes, saying so: grey↔RGB, bilinear resize to size×size.
    (The Python `Featurizer.extract` refuses instead; this is the command line's convenience.)"""
    if images.shape[1] != channels:
        converted = match_channels(images, channels)
        print(f"note: converting {what} from {images.shape[1]} to {channels} channel(s) for the model")
        images = converted
    if images.shape[-2:] != (size, size):
        print(f"note: resizing {what} from {images.shape[-2]}×{images.shape[-1]} to {size}×{size} for the model")
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images.contiguous()


@torch.no_grad()
def collect_features(featurizer: Featurizer, data: ImageSet, ts: list, blocks: list[str], pools: list[int] | None = None,
                     batch_size: int = 250, ensemble: int = 1, seed: int = 0, shared_noise: bool = False,
                     bf16: bool = False, desc: str = "features") -> dict[str, torch.Tensor]:
    """{feature_key(t, block[, pool]): N×… tensor} over the whole set. With `pools`, each map is
    average-pooled to p×p and flattened (N×C·p²); without, the N×C×h×w maps are kept."""
    blocks = featurizer.check_blocks(blocks)
    ts = [featurizer.backbone.noise.check(t) for t in ts]
    parts: dict[str, list[torch.Tensor]] = {}
    n_batches = -(-len(data) // batch_size)
    bar = tqdm(total=n_batches * len(ts), desc=desc, dynamic_ncols=True)
    for b in range(n_batches):
        images = data.images[b * batch_size:(b + 1) * batch_size]
        featurizer.check_images(images)
        latents = featurizer.backbone.encode(images.to(featurizer.backbone.device))
        for t in ts:
            feats = featurizer.extract_latents(latents, t, blocks, ensemble, seed + b, shared_noise, bf16)
            for block, f in feats.items():
                if pools is None:
                    parts.setdefault(feature_key(t, block), []).append(f)
                for p in pools or []:
                    parts.setdefault(feature_key(t, block, p), []).append(F.adaptive_avg_pool2d(f, p).flatten(1))
            bar.update(1)
    bar.close()
    return {k: torch.cat(v) for k, v in parts.items()}
