"""`diffrep panoptic train | eval | predict`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ...core import resolve_device
from ...data import load_panoptic, read_image
from ...data.coco_panoptic import write_split
from ...errors import DiffrepError
from ...options import add_options, from_args
from ...runs import header, write_json
from .evaluate import format_table, images_of, panoptic_maps, plot_overlays, plot_table
from .mask_generator import GeneratorConfig
from .model import PanopticConfig, load_model, name_encoder
from .scorer import PROMPT_STYLES, DenoisingScorer
from .train import _pct, model_side, run_panoptic_train, score, split_vocabulary
from .vocab import Category, Vocabulary


def _train(args) -> None:
    cfg = from_args(PanopticConfig, args, generator=from_args(GeneratorConfig, args))
    run_panoptic_train(cfg, args.out)


def evaluate(run: str, split: str = "test", vocab_text: str | None = None, device: str = "auto",
             out: str | None = None, zero_shot: bool = False, weights=(0.3, 0.7),
             scorer_options: dict | None = None, baselines: bool = True) -> dict:
    """`evaluate_one` on the run and on each of its baselines (train --baselines; `baselines` False: the
    run alone), with a table."""
    start = time.perf_counter()
    result = evaluate_one(run, split, vocab_text, device, out, zero_shot, weights, scorer_options)
    folder = Path(out or run)
    found = sorted(p for p in (Path(run) / "baselines").glob("*") if (p / "odise.json").is_file())
    if not found or not baselines:
        return result
    rows = {"odise": result["summary"]}
    for b in found:
        print(f"baseline {b.name}:", flush=True)
        no_model = json.loads((b / "odise.json").read_text())["config"]["source"] == "pixels"   # not a second load
        rows[b.name] = evaluate_one(b, split, vocab_text, device, folder / "baselines" / b.name,
                                    zero_shot and not no_model, weights, scorer_options)["summary"]
    result["table"] = rows
    result["timing_s"]["with_baselines"] = round(time.perf_counter() - start, 1)
    write_json(folder / "panoptic-eval.json", result)
    plot_table(rows, folder / "panoptic-table.png", split)
    print(format_table(rows, split))
    return result


def evaluate_one(run: str, split: str = "test", vocab_text: str | None = None, device: str = "auto",
                 out: str | None = None, zero_shot: bool = False, weights=(0.3, 0.7),
                 scorer_options: dict | None = None) -> dict:
    """Scores of a trained run on a split (once), naming with the data set's full vocabulary (or
    `vocab_text`, whose names must match the data's categories); `zero_shot`: ensembled with the
    diffusion model's own zero-shot scores (α seen, β unseen; `scorer_options`: DenoisingScorer's
    temperature and relative)."""
    start = time.perf_counter()
    model, cfg, train_vocab, backbone = load_model(run, device)
    data = load_panoptic(cfg.data, split)
    data.check_all()
    full, _ = split_vocabulary(data.categories, cfg.held_out, str(data.json_path))
    vocab = full if vocab_text is None else _matched(Vocabulary.parse(vocab_text), full)
    dev = resolve_device(device)
    model.to(dev)
    names, owner = vocab.name_table(name_encoder(backbone, dev))
    unseen = set(vocab.ids) - set(train_vocab.ids)
    side = model_side(cfg, backbone, data[0].image.shape[-1])
    print(f"scoring {len(data)} {split} scenes of {cfg.data} with {len(vocab)} categories", flush=True)
    scorer = None
    if zero_shot:
        if backbone is None:
            raise DiffrepError("--zero-shot scores masks with the diffusion model; this run has none (pixels)")
        scorer = DenoisingScorer(backbone, vocab, **(scorer_options or {}))
    scores, kept, preds = score(model, data, vocab, unseen, names, owner, side, dev, cfg.batch_size, keep=6,
                                scorer=scorer, weights=weights)
    folder = Path(out or run)
    folder.mkdir(parents=True, exist_ok=True)
    plot_overlays(kept, preds, vocab, folder / f"panoptic-{split}.png")
    timing = {"total": round(time.perf_counter() - start, 1)}
    result = {**header("panoptic-eval", cfg.model, cfg.data, timing), "run": str(run), "split": split,
              "source": cfg.source, "conditioning": cfg.conditioning, "classifier": cfg.classifier,
              "zero_shot": {"alpha": weights[0], "beta": weights[1], **(scorer_options or {})} if zero_shot else None,
              "vocab": vocab.as_json(), "unseen": sorted(unseen), **scores}
    write_json(folder / "panoptic-eval.json", result)
    s = scores["summary"]
    print(f"PQ {_pct(s['all']['pq'])} (seen {_pct(s['seen']['pq'])}, unseen {_pct(s['unseen']['pq'])}; things "
          f"{_pct(s['things']['pq'])}, stuff {_pct(s['stuff']['pq'])}), mIoU {_pct(s['all']['iou'])}; wrote "
          f"{folder / 'panoptic-eval.json'}")
    return result


def _matched(vocab: Vocabulary, full: Vocabulary) -> Vocabulary:
    """A parsed vocabulary with the data's category ids (matched by any name), so predictions score."""
    by_name = {n.lower(): c for c in full.categories for n in c.names}
    cats = []
    for c in vocab.categories:
        match = next((by_name[n.lower()] for n in c.names if n.lower() in by_name), None)
        if match is None:
            raise DiffrepError(f"--vocab category {c.name!r} matches no category of the data set; eval needs names "
                               "it can score (use `panoptic predict` for other names)")
        cats.append(Category(match.id, c.names, match.isthing))
    return Vocabulary(cats, "--vocab")


def predict(run: str, images: list[str], vocab_text: str, out: str, device: str = "auto") -> Path:
    """Panoptic labels (COCO-panoptic layout, split 'predicted') and overlays for image files, named
    with any vocabulary."""
    vocab = Vocabulary.parse(vocab_text)
    model, cfg, _, backbone = load_model(run, device)
    dev = resolve_device(device)
    model.to(dev)
    names, owner = vocab.name_table(name_encoder(backbone, dev))
    files = [Path(p) for p in images]
    tensors = [read_image(p, 3, None)[0] for p in files]
    side = model_side(cfg, backbone, tensors[0].shape[-1])

    def labelled():
        for path, image in zip(files, tensors):
            item = type("Item", (), {"image": image})
            with torch.no_grad():
                result = model(images_of([item], side).to(dev), None, names, owner, vocab)
            seg = panoptic_maps(result, vocab, tuple(image.shape[-2:]))[0]
            ids = seg[..., 1].numpy()
            segments = {int(s): int(seg[..., 0][seg[..., 1] == s][0]) for s in set(ids.ravel().tolist()) - {0}}
            rgb = ((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
            yield path.stem, rgb, ids, segments, None

    categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "synonyms": list(c.names[1:])}
                  for c in vocab.categories]
    root = write_split(out, "predicted", labelled(), categories)
    print(f"wrote {root / 'annotations' / 'panoptic_predicted.json'} and its PNGs", flush=True)
    return root


def register(commands) -> None:
    pan = commands.group("panoptic", help="ODISE: open-vocabulary panoptic segmentation from a text-to-image model")
    p = pan.add("train", _train, help="train the mask generator, captioner and mask classifier (categories held out)")
    add_options(p, PanopticConfig)
    add_options(p, GeneratorConfig)
    p.add_argument("--out", required=True, help="run folder: odise.safetensors, odise.json, panoptic-train.json, "
                                                "panoptic-val.png")
    p = pan.add("eval", lambda a: evaluate(a.run, a.split, a.vocab, a.device, a.out, a.zero_shot, (a.alpha, a.beta),
                                           {"temperature": a.zero_shot_temperature, "relative": a.relative,
                                            "prompts": a.zero_shot_prompts},
                                           not a.no_baselines),
                help="PQ / SQ / RQ (seen and unseen categories) and mIoU of a run on a split, scored once")
    p.add_argument("--run", required=True, help="a `diffrep panoptic train` run folder")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--vocab", default=None, help="'name,synonym;name;…' (default: the data set's categories)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="folder for panoptic-eval.json and pictures (default: the run)")
    p.add_argument("--no-baselines", action="store_true", help="score the run alone, not the baselines in it")
    p.add_argument("--zero-shot", action="store_true", help="ensemble the classifier with the diffusion model's "
                                                             "zero-shot mask scores (denoising error per category prompt)")
    p.add_argument("--alpha", type=float, default=0.3, help="with --zero-shot: its weight for seen categories")
    p.add_argument("--beta", type=float, default=0.7, help="with --zero-shot: its weight for unseen categories")
    p.add_argument("--zero-shot-temperature", type=float, default=3.0,
                   help="with --zero-shot: the scale of its standardised mask scores before their softmax")
    p.add_argument("--relative", action="store_true", help="with --zero-shot: each prompt's error under a mask "
                                                            "less its error over the whole image")
    p.add_argument("--zero-shot-prompts", default="photo", choices=PROMPT_STYLES,
                   help="with --zero-shot: score names under 'a photo of {name}.' (photo) or as the training "
                        "captions name them, 'an eight', 'grass' (caption)")
    p = pan.add("predict", lambda a: predict(a.run, a.images, a.vocab, a.out, a.device),
                help="panoptic labels for image files, naming with any vocabulary")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--vocab", required=True, help="'name,synonym;stuff:name;…' (';' between categories, ',' "
                                                   "between synonyms, 'stuff:' for amorphous regions)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="folder: a COCO-panoptic layout of the predictions")
