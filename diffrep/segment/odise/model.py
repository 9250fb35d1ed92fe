"""The ODISE model: a feature source (the diffusion pyramid, or a baseline's), the mask generator and
a mask classifier, with what it was trained on; saved as one safetensors file of its trainable
weights plus the config that rebuilds the frozen parts.

Sources (the same mask generator on each, in the same run):
- `diffusion`: the text-to-image UNet's decoder pyramid (`features.DiffusionPyramid`);
- `random`: the same UNet with freshly initialised weights, empty prompt;
- `pixels`: the image itself at the four strides, cut into s×s patches (space-to-depth: 3·s² channels),
  so the generator reads as many positions as from the UNet and learns everything else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ...core import Featurizer, RunOn, autocast_dtype, load_backbone, random_init, resolve_device
from ...core.precision import autocast_in
from ...core.text import TextEncoder, load_text_encoder
from ...errors import DiffrepError
from ...options import option
from .features import CONDITIONINGS, TAPS, DiffusionPyramid
from .mask_generator import ClosedSetClassifier, GeneratorConfig, MaskGenerator, TextClassifier
from .vocab import Category, Vocabulary

SOURCES = ("diffusion", "pixels", "random")
# the baselines and ablations trained beside the main run: name -> what changes
BASELINES = {"pixels": {"source": "pixels"}, "random-weights": {"source": "random", "conditioning": "empty"},
             "empty-prompt": {"conditioning": "empty"}, "oracle-caption": {"conditioning": "caption"},
             "closed-set": {"classifier": "closed"}}
CLASSIFIERS = ("text", "closed")
PIXEL_STRIDES = (1, 2, 4, 8)


@dataclass
class PanopticConfig(RunOn):
    """The settings of `diffrep panoptic train` (ODISE): each field is a flag of the command, with the
    same default and range."""
    model: str = option("scenes-t2i", "text-to-image diffusion model: bundled name, diffusers folder or hub id")
    data: str = option("panoptic-scenes", "'panoptic-scenes' or a COCO-panoptic folder (train / val / test)")
    held_out: list = option(["eight", "nine", "gravel"], "category names left out of training (their segments are "
                            "unlabelled there), named again at evaluation: the open-vocabulary test",
                            )
    source: str = option("diffusion", "features: diffusion, pixels (raw image patches) or random (random-weight UNet)",
                         choices=SOURCES)
    conditioning: str = option("implicit", "the UNet's text input: implicit (captioner), empty (prompt) or caption "
                                           "(the true caption: an oracle)", choices=CONDITIONINGS)
    classifier: str = option("text", "mask classifier: text (names' embeddings, open vocabulary) or closed "
                                     "(a linear layer over the training categories)", choices=CLASSIFIERS)
    image_side: int = option(0, "side the images are fed at (0: the diffusion model's own; pixels: the data's); "
                                "`--baselines` feeds the pixel baseline the main run's side, the image the UNet reads",
                             min=0)
    t: int = option(0, "noise level of the features (ODISE: 0, with one fixed noise)", min=0)
    taps: str = option("skip-inputs", "the UNet maps read: skip-inputs (ODISE's: each decoder level's last ResNet input, "
                                      "decoder state + encoder skip) or block-outputs (the decoder blocks' outputs)",
                       choices=TAPS)
    epochs: int = option(8, "passes over the training scenes", min=1)
    captioner_epochs: int = option(1, "with the implicit captioner: train it (live, through the UNet) in the last N "
                                      "epochs only; the earlier ones read cached empty-prompt maps, which is what the "
                                      "captioner gives while its gates are closed (0: every epoch live, as ODISE)", min=0)
    batch_size: int = option(8, "scenes per step", min=1)
    lr: float = option(1e-3, "AdamW learning rate (cosine decay; 1e-3 chosen on val over 3e-4)", above=0)
    train_images: int = option(0, "use the first N training scenes (0: all)", min=0)
    val_images: int = option(0, "score the first N validation scenes each epoch (0: all)", min=0)
    seed: int = option(0, "seed of the initialisation and the batch order")
    baselines: bool = option(False, "also train, into <out>/baselines/, the same generator on raw pixels and on the "
                                    "random-weight UNet, with the empty prompt and the true caption (oracle) instead "
                                    "of the implicit captioner, and with a closed-set classifier; `eval` scores them all")
    generator: GeneratorConfig = option(GeneratorConfig(), "the mask generator's size", cli=False)

    def __post_init__(self):
        super().__post_init__()
        if self.captioner_epochs > self.epochs:
            raise DiffrepError(f"--captioner-epochs {self.captioner_epochs} exceeds --epochs {self.epochs}")


class PixelPyramid(nn.Module):
    """The image at strides 1, 2, 4, 8: s×s patches stacked as channels."""
    channels = [3 * s * s for s in PIXEL_STRIDES]
    strides = list(PIXEL_STRIDES)
    captioner = None

    def forward(self, images: torch.Tensor, captions=None) -> list[torch.Tensor]:
        return [images if s == 1 else F.pixel_unshuffle(images, s) for s in PIXEL_STRIDES]


def build_source(cfg: PanopticConfig, backbone):
    if cfg.source == "pixels":
        return PixelPyramid()
    if cfg.source == "random":
        return DiffusionPyramid(Featurizer(random_init(backbone, cfg.seed)), "empty", cfg.t, cfg.seed, cfg.taps)
    return DiffusionPyramid(Featurizer(backbone), cfg.conditioning, cfg.t, cfg.seed, cfg.taps)


def name_encoder(backbone, device):
    """The text encoder that embeds category names: the diffusion model's own where it has one (as
    ODISE names masks with the text encoder of its diffusion model's family), else the bundled one."""
    if backbone is not None and backbone.text_encoder is not None:
        return TextEncoder(backbone.text_encoder, backbone.tokenizer)
    return load_text_encoder("minilm", device)


class PanopticModel(nn.Module):
    """images → per decoder layer (mask logits B×Q×h×w, class logits B×Q×(K+1)) for a vocabulary."""

    def __init__(self, source: nn.Module, embed_dim: int, cfg: PanopticConfig, train_vocab: Vocabulary):
        super().__init__()
        self.source, self.cfg, self.train_vocab = source, cfg, train_vocab
        classes = len(train_vocab)
        self.generator = MaskGenerator(source.channels, source.strides, embed_dim, cfg.generator, classes)
        self.classifier = TextClassifier(embed_dim) if cfg.classifier == "text" else \
            ClosedSetClassifier(embed_dim, classes)

    def forward(self, images, captions, names, owner, vocab: Vocabulary | None = None) -> dict:
        dtype = autocast_dtype(self.cfg.precision, images.device)   # the frozen UNet's forward only
        with autocast_in(images.device, dtype):
            maps = self.source(images, captions)
        return self.heads(maps, names, owner, vocab)

    def heads(self, maps: list, names, owner, vocab: Vocabulary | None = None) -> dict:
        """What follows the features (the cached path starts here). `vocab`: the vocabulary the logits
        are for (default: the training one); the text classifier reads it from `names`, the closed-set
        one has the training categories' columns only and is mapped onto it by name."""
        out = self.generator([m.float() for m in maps])
        out["logits"] = [self.classifier(e, names, owner) for e in out["embeddings"]]
        if isinstance(self.classifier, ClosedSetClassifier) and vocab is not None:
            out["logits"] = [closed_set_columns(c, self.train_vocab, vocab) for c in out["logits"]]
        return out

    @property
    def live(self) -> bool:
        """Whether the features must be computed at every step (the captioner trains through them)."""
        return getattr(self.source, "captioner", None) is not None

    def _parts(self) -> dict:
        parts = {"generator": self.generator, "classifier": self.classifier}
        if getattr(self.source, "captioner", None) is not None:
            parts["captioner"] = self.source.captioner
        return parts

    def trainable(self) -> dict:
        """The weights that training changes (the UNet's stay frozen): generator, classifier, captioner."""
        return {f"{p}.{k}": v for p, m in self._parts().items() for k, v in m.state_dict().items()}

    def load_trainable(self, weights: dict) -> None:
        for part, module in self._parts().items():
            module.load_state_dict({k[len(part) + 1:]: v for k, v in weights.items() if k.startswith(part + ".")})

    def save(self, folder: Path, train_vocab: Vocabulary) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.trainable().items()}, str(folder / "odise.safetensors"))
        (folder / "odise.json").write_text(json.dumps({"config": asdict(self.cfg), "train_vocab": train_vocab.as_json()},
                                                      indent=2))


def closed_set_columns(logits: torch.Tensor, train_vocab: Vocabulary, vocab: Vocabulary) -> torch.Tensor:
    """Closed-set logits over the training categories (+ null) → over `vocab`'s (+ null): a category
    takes the column of the training category that shares one of its names; one it was never trained
    on gets a logit it can never win with (the closed-set classifier cannot name it)."""
    by_name = {n.lower(): i for i, c in enumerate(train_vocab.categories) for n in c.names}
    out = logits.new_full((*logits.shape[:-1], len(vocab) + 1), -1e4)
    for j, c in enumerate(vocab.categories):
        i = next((by_name[n.lower()] for n in c.names if n.lower() in by_name), None)
        if i is not None:
            out[..., j] = logits[..., i]
    out[..., -1] = logits[..., -1]
    return out


def load_model(run: str | Path, device: str = "auto"):
    """(model, its config, the training vocabulary, the backbone or None) of a `panoptic train` run."""
    run = Path(run)
    meta_path = run / "odise.json"
    if not meta_path.is_file():
        raise DiffrepError(f"{run} is not a `diffrep panoptic train` run (no odise.json)")
    meta = json.loads(meta_path.read_text())
    raw = dict(meta["config"])
    raw["generator"] = GeneratorConfig(**raw["generator"])
    raw["device"] = device
    raw.setdefault("taps", "block-outputs")   # runs saved before the option read the blocks' outputs
    cfg = PanopticConfig(**raw)
    vocab = Vocabulary([Category(c["id"], tuple(c["names"]), c["isthing"]) for c in meta["train_vocab"]])
    backbone = None if cfg.source == "pixels" else load_backbone(cfg.model, device, **cfg.model_options())
    model = PanopticModel(build_source(cfg, backbone), name_encoder(backbone, "cpu").width, cfg, vocab)
    model.load_trainable(load_file(str(run / "odise.safetensors")))
    return model.eval().to(resolve_device(device)), cfg, vocab, backbone
