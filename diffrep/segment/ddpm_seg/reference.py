"""DDPM-Seg's own settings for each of its data sets: what `diffrep segment train --reference SET` sets.

Every number below is what the DDPM-Seg reference repository's experiments/<set>/ddpm.json says
(yandex-research/ddpm-segmentation; the same in the six files unless the row says otherwise):
- `blocks` [5, 6, 7, 8, 12]: indices into the guided-diffusion UNet's `output_blocks`, whose outputs it
  hooks (`input_activations`: false); set here as `output_blocks.N`, which the featurizer resolves to
  diffrep's block names;
- `steps` [50, 150, 250]: timesteps of its 1000-step schedule, set as `--t`;
- `share_noise`: true: one noise tensor, seeded once, for every image and every step (its feature
  extractor adds that same tensor at each step): shared noise, the same at every t;
- `model_num` 10 → `--k`; `batch_size` 64 → `--batch-size`; `training_number` → `--labelled`;
- `number_class`, `ignore_label`: the classes (named by number) and the ignored label, used when the
  data folder declares no classes of its own (the reference's folders hold no classes.json); the class
  count also sizes the MLPs (256/128 hidden units from 30 classes, 128/32 below, as the reference's);
- `dim` [256, 256, 8448]: images and labels at 256×256, 8,448 channels per pixel (ADM-256 at those
  blocks and steps); `upsample_mode` bilinear, as diffrep reads maps anyway; `model_type` ddpm;
- `model_path`: the checkpoint it loads, recorded here; `--model` names that checkpoint converted.
Not set, because diffrep has no such setting or trains differently: `testing_number` (give it to
`segment eval --n`), `validation_path`, `max_training` (its training code never reads it), and its
stopping rule (every pixel each epoch, stopping when the batch loss has not improved for 50 steps
after epoch 3; diffrep draws pixels per epoch and stops on a held-out loss, `--patience`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import DiffrepError


@dataclass(frozen=True)
class ReferenceSet:
    """One experiments/<set>/ddpm.json."""

    model_path: str                       # the guided-diffusion checkpoint it loads
    number_class: int
    ignore_label: int
    training_number: int                  # labelled images, the first N of real/train
    testing_number: int                   # test images, the first N of real/test
    blocks: tuple = (5, 6, 7, 8, 12)      # output_blocks indices
    steps: tuple = (50, 150, 250)         # timesteps of 1000
    dim: tuple = (256, 256, 8448)         # image side × side × channels per pixel
    model_num: int = 10                   # MLPs in the ensemble
    batch_size: int = 64                  # pixels per step
    share_noise: bool = True              # one noise tensor for every image and every step
    upsample_mode: str = "bilinear"
    input_activations: bool = False       # hooks keep the blocks' outputs
    model_type: str = "ddpm"


REFERENCE = {
    "ffhq_34": ReferenceSet("checkpoints/ddpm/ffhq.pt", 34, 255, training_number=20, testing_number=20),
    "celeba_19": ReferenceSet("checkpoints/ddpm/ffhq.pt", 19, 255, training_number=20, testing_number=500),
    "bedroom_28": ReferenceSet("checkpoints/ddpm/lsun_bedroom.pt", 29, 0, training_number=40, testing_number=20),
    "cat_15": ReferenceSet("checkpoints/ddpm/lsun_cat.pt", 15, 255, training_number=30, testing_number=20),
    "horse_21": ReferenceSet("checkpoints/ddpm/lsun_horse.pt", 21, 255, training_number=30, testing_number=30),
    "ade_bedroom_30": ReferenceSet("checkpoints/ddpm/lsun_bedroom.pt", 30, 255, training_number=50,
                                   testing_number=650),
}


def reference_set(name: str) -> ReferenceSet:
    if name not in REFERENCE:
        raise DiffrepError(f"unknown --reference {name!r}; DDPM-Seg's data sets: {', '.join(REFERENCE)}")
    return REFERENCE[name]


def reference_settings(name: str) -> dict:
    """The SegConfig fields the reference's `name` fixes (flags given with --reference override them)."""
    ref = reference_set(name)
    return {"reference": name, "blocks": [f"output_blocks.{i}" for i in ref.blocks], "ts": list(ref.steps),
            "k": ref.model_num, "batch_size": ref.batch_size, "labelled": ref.training_number,
            "shared_noise": ref.share_noise, "noise_per_t": not ref.share_noise}


def reference_classes(name: str) -> tuple[list[str], int]:
    """The reference's classes (0..number_class-1, named by number) and its ignored label."""
    ref = reference_set(name)
    return [str(c) for c in range(ref.number_class)], ref.ignore_label
