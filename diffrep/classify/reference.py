"""Published settings by one switch: `diffrep classify --reference diffssl` reads what GDC, DifFormer and
DifFeed read in their reference repository, github.com/soumik-kanad/diffssl, on OpenAI's ADM
`256x256_diffusion_uncond.pt` (its scripts `linear.sh`, `attention.sh`, `fusion.sh`, `feedback.sh`, and
the feedback forward pass of its `guided_diffusion/unet.py`).

| what                                   | diffssl                              | from                              |
|----------------------------------------|--------------------------------------|-----------------------------------|
| single-map heads (linear, MLP, attention) | block 24 at t 150                 | linear.sh, attention.sh           |
| DifFormer's fusion                     | blocks 19, 24, 30 × t 90, 150, 300   | fusion.sh                         |
| DifFeed                                | reads block 24 of pass 2 at t 150; decoder block b (21, 24, …, 36) added to encoder block 38 − b | feedback.sh, unet.py |

Blocks are in diffssl's numbering of ADM's modules, as its scripts give them: 1–18 `input_blocks[0..17]`,
19 `middle_block`, 20–37 `output_blocks[0..17]`. `Featurizer.check_blocks` turns them into module paths
of the converted `UNet2DModel` (24 = `output_blocks.4` = `up_blocks.1.attentions.1`, 1024 channels at 16²).
On a model whose 19 is not the middle block the numbers name other modules, so the switch is refused there.

Why the pairs are explicit: ADM's `output_blocks[k]` concatenates the skip of `input_blocks[17 − k]`, so
38 − b is the encoder block whose output decoder block b reads as its skip. The fed-back blocks are the
second of each decoder level's three (`output_blocks[3l + 1]`), which ends in no upsampler, so each pair
has one shape (channels and side). diffrep's own rule (`feedback.py`) pairs whole levels instead, `up_blocks.j` with
`down_blocks.(N−1−j)`: on ADM-256 that is decoder block 22 + 3j with encoder block 19 − 3j (18 for j = 0),
never 38 − b, with maps resized 2× to 4× (`tests/test_diffssl_reference.py` checks both on the layout).

Not switched: the training settings. The reference trains 28 epochs of SGD with 1,024-wide tokens
(`--epochs 28 --width 1024 --optimizer sgd --patience 0`, for a GPU); its linear head reads 2×2 pools
(`--pools 2`). Settings given explicitly (flags,
config fields) win over the reference's; classify.json records the reference, what it set, what it
resolved to and what was given instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import DiffrepError

SOURCE = "github.com/soumik-kanad/diffssl (scripts/*.sh, guided_diffusion/unet.py), ADM 256x256_diffusion_uncond.pt"


@dataclass(frozen=True)
class Reading:
    """What a classify run reads, as `ClassifyConfig` fields of the same names."""
    blocks: tuple           # DifFormer's fused blocks
    ts: tuple               # and noise levels
    head_block: str         # the block the single-map heads and DifFeed read
    head_t: int             # and its noise level
    feedback_pairs: tuple   # DifFeed: (decoder block, encoder block its adapted map is added to)


def _skip_partner(block: int) -> int:
    """diffssl's encoder partner of decoder block b: the block whose skip b reads (37 blocks, 38 = 1 + 37)."""
    return 38 - block


DIFFSSL = Reading(blocks=("19", "24", "30"), ts=(90, 150, 300), head_block="24", head_t=150,
                  feedback_pairs=tuple((str(b), str(_skip_partner(b))) for b in (21, 24, 27, 30, 33, 36)))
REFERENCES = {"diffssl": DIFFSSL}


def apply_reference(cfg) -> dict | None:
    """Fill the reading settings `cfg` leaves unset (None) from `cfg.reference`'s table, in place.
    The record for classify.json (None without a reference): its name and source, what it set and
    what was given instead."""
    if cfg.reference is None:
        return None
    table = asdict(REFERENCES[cfg.reference])
    given = {name: getattr(cfg, name) for name in table if getattr(cfg, name) is not None}
    for name, value in table.items():
        if name not in given:
            setattr(cfg, name, [list(v) if isinstance(v, tuple) else v for v in value]
                    if isinstance(value, tuple) else value)
    return {"name": cfg.reference, "source": SOURCE, "set": {k: v for k, v in table.items() if k not in given},
            "given": given}


BLOCK_SETTINGS = ("blocks", "head_block", "feedback_pairs")
MIDDLE = "19"   # diffssl's number of ADM-256's middle block: 18 input blocks come before it


def check_numbering(record: dict | None, featurizer) -> None:
    """Refuse diffssl's block numbers on a model whose numbering is not ADM-256's: where the middle
    block is not 19, the same numbers name other modules and the run would read them silently."""
    if record is None or not set(record["set"]) & set(BLOCK_SETTINGS):
        return
    try:
        middle = featurizer.check_blocks([MIDDLE])
    except DiffrepError:
        middle = None
    if middle != ["mid_block"]:
        raise DiffrepError(f"--reference {record['name']} numbers ADM-256's blocks (19 = the middle block); this model's "
                           f"19 is {middle[0] if middle else 'no block'}: name the blocks with --blocks, --head-block "
                           "and --feedback-pairs")


def resolved(record: dict | None, cfg) -> dict | None:
    """The record with what the reference's settings resolved to (module paths, checked levels)."""
    if record is None:
        return None
    return {**record, "resolved": {name: getattr(cfg, name) for name in record["set"]}}
