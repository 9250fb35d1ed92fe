"""PCK evaluation of DIFT matching, with the baselines in the same run (`diffrep match-eval`), and the
settings both it and the t × block sweep (`sweep.py`) take.

`run_match_eval` scores one (t, block) and both baselines on a benchmark, writes config.json,
match-eval.json, example match pictures and a PCA picture, and prints the table. With `--refine`
it scores the diffusion matches twice, coarse ("diffusion") and refined ("diffusion+refine"), from
one matching run: the refined row moves the very matches of the coarse row, so the two differ by the
refinement alone. The baselines stay coarse: they are the classical reference points. Every method
has PCK at each α of `metrics.ALPHAS` (strict 0.01 to loose 0.15) and the median end-point error in
pixels; α = 0.1 stays the headline, as it is the one DIFT reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ...data import Pair, load_pairs
from ...core import RunOn
from ...errors import DiffrepError
from ...metrics import ALPHAS, correct_matches, pair_hits, score_matches
from ...options import MODEL_HELP, named, noise_level, noise_levels, option
from ...runs import header, locked, write_results
from .describe import (Describer, DiffusionDescriber, category_prompt, daisy_describer, load_featurizer,
                       parse_descriptor, pixel_describer)
from .reference import REFERENCES, reference, references_help
from .matching import CHUNK, Matches, match_maps, prepare
from .refine import MAX_RADIUS, Refiner, check_settings, refiner
from .pictures import draw_matches, draw_pca, pca_rgb

HEADLINE = "0.1"  # the α of the heatmap, the "best" cell and the join rule
BEST = "best"     # the sweep's automatic join row (`best_join`)
REFINED = "diffusion+refine"   # match-eval's row of the refined diffusion matches


@named("temperature (a positive number, or 'hard')")
def temperature(text: str) -> float | None:
    """A soft-argmax temperature; 'hard' is None, the hard argmax."""
    return None if text.strip().lower() == "hard" else float(text)


@dataclass
class DescriptorConfig(RunOn):
    """How every DIFT command describes images. A setting left unset comes from `reference` when one
    is named, else from the defaults by model family (`DiffusionDescriber`); one that is set wins."""

    model: str = option("photos-ddpm", MODEL_HELP)
    reference: str | None = option(None, "start from DIFT's published setting for a model family ("
                                         + references_help() + "; one scale); flags given as well override it",
                                   choices=tuple(REFERENCES), parse=str)
    block: str | None = option(None, "block to match with (diffrep or guided-diffusion name); 'a+b' joins blocks, "
                                     "'a@50+b@0' gives a block its own noise levels, each part L2-normalised "
                                     "(default: the reference's, else up_blocks.1 in SD-sized latent UNets as DIFT, "
                                     "else mid_block)", parse=str)
    t: float | list | None = option(None, "noise level: timestep (σ for EDM), or several (0,50: every block at "
                                          "every level, joined); default the reference's, else one per model "
                                          "family whatever the block: 261 for latent DDPM models (DIFT's for Stable "
                                          "Diffusion), else the lightest (0; σ_min for EDM), best on validation "
                                          "warps with photos-ddpm", parse=noise_levels)
    ensemble: int | None = option(None, "noise draws averaged (default: the reference's, else 8, DIFT's)", parse=int,
                                  min=1)
    scales: list | None = option(None, "image scales whose features are joined (default: the reference's (1), else "
                                       "1,0.5,0.25,0.125 for pixel UNets, 1 for latent UNets and DiT)", parse=float,
                                 many=True, above=0, max=4)
    seed: int = option(0, "seed of the noise (and of the warps and geo pairs: 1 validation, 0 test)")
    prompt: str | None = option(None, "text condition for conditional models (default: 'a photo of a {category}' "
                                      "when the category is known, else empty)", parse=str)
    mutual: bool = option(False, "keep only mutual nearest neighbours (others count as misses)")
    size: int | None = option(None, "match: resize both images to SIZE×SIZE first; warps, geo: image side "
                                    "(default 128); SPair: resize to SIZE×SIZE (default: the reference's)", parse=int,
                              min=8)
    refine: str | None = option(None, "refine each match inside a window with a finer descriptor: a block or join "
                                      "of the same model, as --block spells them (read at --refine-t, one image "
                                      "scale, the same ensemble and seed), or daisy or pixels (default: no "
                                      "refinement)", parse=str, metavar="FINE")
    refine_t: float | list | None = option(None, "noise level(s) of the --refine block (default the model's lightest: "
                                                 "fine detail is what light noise leaves intact)", parse=noise_levels)
    refine_radius: int | None = option(None, f"refinement window of (2R+1)² pixels, R from 1 to {MAX_RADIUS} "
                                             "(default half a coarse cell: the coarse match is mostly within half "
                                             "a cell of the truth, and a wider window mostly offers the fine "
                                             "descriptor lookalikes)", parse=int, metavar="R")
    refine_temperature: float | None = option(None, "soft-argmax temperature (> 0) for sub-pixel matches; 'hard' "
                                                    "(default): the best pixel of the window", parse=temperature,
                                              metavar="T")
    refine_coarse_weight: float | None = option(None, "share W of the coarse descriptor's cosine in the refinement "
                                                      "window's similarity, from 0 up to 1 (default 0: the fine "
                                                      "descriptor alone); it keeps flat or repeated patches from "
                                                      "pulling a match to a lookalike", parse=float, metavar="W")
    refine_min_similarity: float | None = option(None, "a match moves only where its window's best similarity "
                                                       "reaches S (a cosine, -1 to 1), else it stays coarse (default: "
                                                       "always move): a coarse match a window away from the truth "
                                                       "has nothing to move to", parse=float, metavar="S")
    refine_mutual: bool = option(True, "let a match move even where its refined point, matched back into the "
                                       "window around the source point, lands more than a pixel from it (by "
                                       "default it stays coarse there)")

    def __post_init__(self):
        super().__post_init__()
        self._check_refine()

    def _check_refine(self) -> None:
        """Each --refine-* setting in range, and none without --refine (it would do nothing)."""
        given = {"--refine-t": self.refine_t, "--refine-radius": self.refine_radius,
                 "--refine-temperature": self.refine_temperature,
                 "--refine-coarse-weight": self.refine_coarse_weight,
                 "--refine-min-similarity": self.refine_min_similarity,
                 "--no-refine-mutual": None if self.refine_mutual else False}
        if self.refine is None:
            stray = [flag for flag, value in given.items() if value is not None]
            if stray:
                raise DiffrepError(f"{stray[0]} needs --refine FINE (a finer block of the model, daisy or pixels)")
            return
        check_settings(self.refine_radius, self.refine_temperature,   # a radius left None: `refiner` picks it
                       self.coarse_weight, self.refine_min_similarity)

    @property
    def coarse_weight(self) -> float:
        """--refine-coarse-weight, 0 when it is not given (the field keeps None for "not given", so that
        `_check_refine` can refuse it without --refine)."""
        return self.refine_coarse_weight or 0.0

    @property
    def image_size(self) -> int | None:
        """--size, else the reference's (DIFT resizes every image to it), else None."""
        ref = reference(self.reference)
        return self.size if self.size is not None or ref is None else ref.size

    def describer(self, featurizer) -> DiffusionDescriber:
        return DiffusionDescriber(featurizer, self.block, self.t, self.ensemble, self.seed, self.precision,
                                  scales=self.scales, reference=self.reference)

    def refiner(self, describer: DiffusionDescriber) -> Refiner | None:
        """The refinement of the describer's matches that --refine asks for, or None."""
        if self.refine is None:
            return None
        return refiner(describer, self.refine, self.refine_t, self.refine_radius, self.refine_temperature,
                       self.coarse_weight, self.refine_min_similarity, self.refine_mutual)


@dataclass
class MatchEvalConfig(DescriptorConfig):
    """The settings of `diffrep match-eval` and `diffrep match-sweep` (DIFT): each field is a flag of
    the commands, with the same default and range."""
    benchmark: str = option("warps", "'warps' (bundled photographs, mild warps), 'geo' (unseen photographs rotated "
                                     "±90° and zoomed ×0.5-2) or 'spair' (with --spair)",
                            choices=("warps", "geo", "spair"))
    spair: str | None = option(None, "SPair-71k folder (PairAnnotation/, JPEGImages/); implies --benchmark spair",
                               parse=str)
    split: str = option("test", "SPair split: train, val or test (SPair's trn also accepted)",
                        choices=("train", "val", "test", "trn"))
    pairs: int | None = option(None, "warps, geo: number of pairs (default 120); SPair: at most this many", parse=int,
                               min=1)
    baselines: bool = option(True, "skip the raw-pixel and DAISY baselines")
    examples: int = option(4, "match pictures written for the first pairs (match-eval)", min=0)
    ts: list | None = option(None, "noise levels (match-sweep; default 0,10,50,100,200, plus the reference's t)",
                             parse=noise_level, many=True, flag="--t")
    blocks: list | None = option(None, "blocks (match-sweep; default: every top-level block, plus the reference's "
                                       "block)", many=True)
    joins: str = option(BEST, "hyper-feature rows (match-sweep): ';'-separated joins whose every block names its "
                              "levels ('mid_block@0,50+up_blocks.0@0,50;mid_block@50+up_blocks.0@0'), and/or "
                              f"'{BEST}': the sweep's two best blocks at its two best levels (each ranked by its best "
                              "cell's PCK@0.1); 'none': no join row", parse=str)

    def __post_init__(self):
        super().__post_init__()
        self.join_specs()   # malformed joins refused before any model is loaded

    def join_specs(self) -> list[str]:
        """--joins as a list of descriptors and the word 'best' (see `sweep_joins`)."""
        specs = [j.strip() for j in self.joins.split(";") if j.strip()]
        if not specs:
            raise DiffrepError(f"--joins {self.joins!r} holds no join: give e.g. '{BEST}', "
                               "'mid_block@0,50+up_blocks.0@0,50', or 'none'")
        if specs == ["none"]:
            return []
        for spec in specs:
            if spec != BEST:
                check_join(spec)
        return specs

    @property
    def benchmark_name(self) -> str:
        return "spair" if self.spair else self.benchmark

    def load_pairs(self) -> tuple[list[Pair], int | None, str]:
        if self.benchmark == "spair" and not self.spair:
            raise DiffrepError("the spair benchmark needs the SPair-71k folder: --spair /path/to/SPair-71k")
        if self.spair and self.benchmark == "geo":   # warps is the default, so only geo can be a clash
            raise DiffrepError("--spair runs the SPair-71k benchmark, --benchmark geo the bundled one: give one")
        return load_pairs(self.spair or self.benchmark, self.split, self.pairs, self.image_size, self.seed)


# ----------------------------------------------------------------------------- evaluation

def check_join(spec: str) -> None:
    """A sweep's join names every block's levels (the sweep has no one t to read a bare block at) and
    joins two (block, t) parts or more (one is a cell of the grid)."""
    parts = parse_descriptor(spec)
    bare = next((b for b, levels in parts if levels is None), None)
    if bare is not None:
        raise DiffrepError(f"--joins {spec!r}: give {bare} its noise levels ({bare}@0 or {bare}@0,50): the sweep "
                           "has no one t to read it at")
    if sum(len(levels) for _, levels in parts) < 2:
        raise DiffrepError(f"--joins {spec!r} is one (block, t) map, a cell of the grid: a join needs two or more")


def predict(describer: Describer, pairs: list[Pair], size: int | None = None, prompt: str | None = None, mutual: bool = False,
            pairs_per_batch: int = 4, chunk: int = CHUNK, desc: str = "matching",
            refine: Refiner | None = None) -> dict[str, list[Matches]]:
    """Matches of every pair's source keypoints, for each of the describer's blocks: {block: [Matches]}.
    `prompt` None means DIFT's default per pair (category_prompt of its category). With `refine`, the
    matches are refined with fine maps of the same prepared images (`Matches.unrefined()`: the coarse)."""
    size = size or describer.fixed_size
    out: dict[str, list[Matches]] = {b: [] for b in describer.blocks}
    for b0 in tqdm(range(0, len(pairs), pairs_per_batch), desc=desc, dynamic_ncols=True, leave=False):
        batch = pairs[b0:b0 + pairs_per_batch]
        groups: dict[str, list[int]] = {}  # pairs with different prompts cannot share a forward pass
        for i, pair in enumerate(batch):
            groups.setdefault(prompt if prompt is not None else category_prompt(pair.category), []).append(i)
        results: list = [None] * len(batch)
        for text, idx in groups.items():
            prepared = [tuple(prepare(im, describer.stride, size) for im in batch[i].images()) for i in idx]
            images = [p.image for pp in prepared for p in pp]
            maps = describer.describe(images, text)
            fine = refine.maps(images, text) if refine else [None] * len(images)
            for j, i in enumerate(idx):
                results[i] = (prepared[j], maps[2 * j], maps[2 * j + 1], fine[2 * j:2 * j + 2])
        for pair, ((src, tgt), fs, ft, fine) in zip(batch, results):
            refinement = refine.refinement(*fine) if refine else None
            for block in describer.blocks:
                out[block].append(match_maps(fs[block], src, ft[block], tgt, pair.source_points, mutual, chunk=chunk,
                                             refine=refinement))
    return out


def score_baselines(pairs, size, mutual) -> dict:
    out = {}
    for name, describer in (("pixels", pixel_describer()), ("daisy", daisy_describer())):
        matches = predict(describer, pairs, size, mutual=mutual, desc=f"baseline {name}")[describer.blocks[0]]
        out[name] = {**score_matches(pairs, matches), "descriptor": describer.blocks[0]}
    return out


def run_match_eval(cfg: MatchEvalConfig, out: str | Path) -> dict:
    """`diffrep match-eval`: match the benchmark's pairs with the diffusion describer (and its
    refinement), score PCK and end-point error beside the baselines, print the table, and write `match-eval.json`
    and example pictures into the run folder `out`. Returns the results."""
    with locked(out) as out:
        start = time.time()
        pairs, size, rule = cfg.load_pairs()
        describer = cfg.describer(load_featurizer(cfg.model, cfg.device, cfg.precision, **cfg.model_options()))
        refine = cfg.refiner(describer)
        print(f"{len(pairs)} pairs, {sum(len(p.source_points) for p in pairs)} keypoints; {cfg.model} "
              f"{describer.blocks[0]} {settings_line(describer, refine)}")
        matches = predict(describer, pairs, size, cfg.prompt, cfg.mutual, desc="diffusion features",
                          refine=refine)[describer.blocks[0]]
        rows = {"diffusion": [m.unrefined() for m in matches], **({REFINED: matches} if refine else {})}
        refined = {REFINED: {"refine": refine.settings()}} if refine else {}
        methods = {name: {**score_matches(pairs, found), "block": describer.blocks[0], "t": describer.t,
                          "scales": list(describer.scales), **refined.get(name, {}),
                          "pck@0.1_per_pair": _per_pair(pairs, found)} for name, found in rows.items()}
        if cfg.baselines:
            methods.update(score_baselines(pairs, size, cfg.mutual))
        result = {**run_header(cfg, pairs, rule, start), "block": describer.blocks[0], **describer.settings(),
                  "refine": refine.settings() if refine else None, "refined_methods": [REFINED] if refine else [],
                  "methods": methods}
        write_results(out, "match-eval", result, cfg)
        _examples(describer, pairs[:cfg.examples], matches, size, cfg.prompt, out)
        print(format_eval_table(result))
        print(f"wrote {out / 'match-eval.json'} and example pictures in {out} ({result['timing_s']['total']:.0f} s)")
        return result


def _per_pair(pairs: list[Pair], matches: list[Matches]) -> dict[str, float]:
    return {p.name: round(100 * pair_hits(p, m, 0.1).float().mean().item(), 1) for p, m in zip(pairs, matches)}


def refine_text(settings: dict) -> str:
    """A refinement's settings as the commands print them: 'refined by up_blocks.1 t=0, window 5×5, hard'."""
    t = "" if settings["t"] is None else f" t={levels_text(settings['t'])}"
    n, temp = settings["window"], settings["temperature"]
    weight = settings.get("coarse_weight") or 0
    return (f"refined by {settings['fine']}{t}, window {n}×{n}, " + ("hard" if temp is None else f"T={temp:g}")
            + (f", coarse weight {weight:g}" if weight else "")
            + (f", moves from similarity {settings['min_similarity']:g}" if settings.get("min_similarity") is not None else "")
            + (", mutual" if settings.get("mutual") else ""))


def settings_line(describer: DiffusionDescriber, refine: Refiner | None = None) -> str:
    """t, ensemble, scales and reference of a describer (and its refinement), as the commands print them."""
    ref = f" (reference {describer.reference_name})" if describer.reference else ""
    fine = f"; {refine_text(refine.settings())}" if refine else ""
    return f"t={levels_text(describer.t)} ensemble {describer.ensemble} scales {list(describer.scales)}{ref}{fine}"


def levels_text(t) -> str:
    """A noise level, or several as the command line takes them: '0', '0,50'."""
    return ",".join(map(str, t)) if isinstance(t, list) else str(t)


def run_header(cfg: MatchEvalConfig, pairs: list[Pair], rule: str, start: float) -> dict:
    return {**header("dift", cfg.model, cfg.benchmark_name, {"total": round(time.time() - start, 1)}),
            "benchmark": cfg.benchmark_name, "n_pairs": len(pairs), "n_points": sum(len(p.source_points) for p in pairs),
            "alphas": list(ALPHAS), "threshold": rule, "size": cfg.image_size,
            "pck": "per_point: all keypoints pooled; per_image: mean over pairs of each pair's fraction (%)",
            "median_epe": "end-point error in pixels of the target image; per_point: median over all keypoints; "
                          "per_image: median over pairs of each pair's median"}


def _examples(describer, pairs: list[Pair], matches, size, prompt, out: Path) -> None:
    """Match pictures of the first pairs (green within 0.1·threshold size, red beyond; refined matches
    when refined) and the PCA picture of the first pair's (coarse) features."""
    for pair, m in zip(pairs, matches):
        src, tgt = pair.images()
        ok = correct_matches(m.points, pair.target_points, pair.threshold_size, 0.1)
        how = "" if m.coarse is None else ", refined"
        draw_matches(src, tgt, pair.source_points, m.points, out / f"example-{pair.name}.png", ok,
                     f"{pair.name}: {describer.blocks[0]} t={levels_text(describer.t)}{how}")
    if pairs:
        images = pairs[0].images()
        prepared = [prepare(im, describer.stride, size or describer.fixed_size) for im in images]
        text = prompt if prompt is not None else category_prompt(pairs[0].category)
        maps = [d[describer.blocks[0]] for d in describer.describe([p.image for p in prepared], text)]
        shown = [p.image[:, :p.hw[0], :p.hw[1]] for p in prepared]
        draw_pca(shown, pca_rgb(maps, prepared), out / f"features-{pairs[0].name}.png")


def format_eval_table(result: dict) -> str:
    """PCK (%) at each α and the median EPE (pixels), per point and per image, one row per method."""
    alphas = [str(a) for a in result["alphas"]]
    labels = {name: f"{name} ({r['descriptor']})" if "block" not in r else
              f"{name} ({r['block']}, t={levels_text(r['t'])}"
              + (f"; {refine_text(r['refine'])})" if "refine" in r else ")")
              for name, r in result["methods"].items()}
    width = max(34, *(len(v) + 2 for v in labels.values()))
    pair = "pt".rjust(7) + "img".rjust(6)   # each column group: per point, then per image
    lines = [f"PCK (%) on {result['benchmark']} ({result['n_pairs']} pairs, {result['n_points']} points); "
             f"threshold {result['threshold']}; median end-point error (EPE) in pixels",
             " " * width + "".join(f"@{a}".rjust(13) for a in alphas) + "median EPE".rjust(13),
             "method".ljust(width) + pair * (len(alphas) + 1)]
    for name, r in result["methods"].items():
        cells = [f"{r[a]['per_point']:.1f}".rjust(7) + f"{r[a]['per_image']:.1f}".rjust(6) for a in alphas]
        epe = r["median_epe"]
        cells.append(f"{epe['per_point']:.2f}".rjust(7) + f"{epe['per_image']:.2f}".rjust(6))
        lines.append(labels[name].ljust(width) + "".join(cells))
    return "\n".join(lines)
