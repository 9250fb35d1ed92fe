"""How a classification head is trained, and how that recipe is chosen on validation (never on test).

A `Recipe` is the optimiser with its schedule and regularisation:

- `adamw` (the default): AdamW, the learning rate warmed up linearly over the first `warmup` of the
  steps, then cosine-decayed to zero; the recipe small heads and transformers are trained with on a
  few thousand images.
- `sgd`: the ImageNet reference's recipe (momentum 0.9, the learning rate ×0.1 at each quarter of
  the epochs), kept to reproduce it.

Both smooth the labels (`label_smoothing`) and stop early: after `patience` epochs without a better
validation accuracy the run ends, and the weights of the best epoch are kept.

`search` trains one head per point of a small learning-rate × weight-decay grid (`GRIDS`) (cheap: the features
are extracted once and cached) and keeps the point best on validation, then `train_seeds` trains the
chosen recipe again under other seeds (head initialisation and batch order; the features stay fixed).
Every head of `diffrep classify`, on every source alike, and DifFeed's live training go through here.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..core.precision import autocast_in

OPTIMIZERS = ("adamw", "sgd")

# The grid each kind of head is chosen from: (learning rates, weight decays). Pooled heads are cheap,
# so they get six points; the convolutional and attention heads cost 10-50× more per epoch, so they get
# two learning rates at one weight decay (decoupled decay over a few hundred steps moved no validation
# score in our runs; the lr does). `feedback` trains live (three forwards per image), so it takes the
# recipe chosen for the attention head on the same cell instead of a grid.
GRIDS = {
    "linear": ((1e-3, 3e-3, 1e-2), (1e-4, 5e-2)),
    "mlp": ((1e-3, 3e-3, 1e-2), (1e-4, 5e-2)),
    "cnn": ((1e-3, 3e-3), (5e-4,)),
    "attention": ((3e-4, 1e-3), (5e-2,)),
    "fusion": ((3e-4, 1e-3), (5e-2,)),
}
SGD_LR = {"attention": 5e-2, "fusion": 5e-2}   # the reference's SGD rates; 1e-2 for every other head


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 5e-2
    epochs: int = 12
    warmup: float = 0.05            # fraction of all steps (AdamW only)
    label_smoothing: float = 0.1
    patience: int = 3               # epochs without a better val accuracy before stopping; 0: never

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; one of {', '.join(OPTIMIZERS)}")

    def as_json(self) -> dict:
        return asdict(self)


def grid(kind: str, base: Recipe, lrs=None, weight_decays=None) -> list[Recipe]:
    """The recipes a head of `kind` is chosen from: `base` at every (lr, weight decay) of `lrs` ×
    `weight_decays` (default: the kind's GRIDS entry; for SGD the reference's one rate at 1e-4)."""
    if base.optimizer == "sgd":
        default_lrs, default_wds = (SGD_LR.get(kind, 1e-2),), (1e-4,)
    else:
        default_lrs, default_wds = GRIDS.get(kind, GRIDS["attention"])
    return [replace(base, lr=lr, weight_decay=wd) for lr in (lrs or default_lrs)
            for wd in (weight_decays or default_wds)]


def schedule(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """A per-step LambdaLR: AdamW warms up linearly then decays by a cosine to zero at the last step;
    SGD divides by 10 at each quarter of the epochs (as the reference's StepLR)."""
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.optimizer == "sgd":
        quarter = max(1, math.ceil(recipe.epochs / 4)) * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 ** (step // quarter))
    warm = max(1, round(recipe.warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


_NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def optimizer(module: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW or SGD over `module`'s trainable parameters. Only weight matrices and kernels are
    decayed: norms' scales, biases, and what a module lists in its `no_weight_decay()` (tokens and
    position embeddings) are not, as usual (decaying a LayerNorm's scale only fights it)."""
    exempt = {id(p) for m in module.modules() if hasattr(m, "no_weight_decay") for p in m.no_weight_decay()}
    decay, keep = [], []
    for owner in module.modules():
        for p in owner.parameters(recurse=False):
            if p.requires_grad:
                (decay if p.ndim >= 2 and not isinstance(owner, _NORMS) and id(p) not in exempt else keep).append(p)
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, recipe.weight_decay), (keep, 0.0)) if ps]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def _on(inputs: list, device) -> list:
    return [x.to(device) if torch.is_tensor(x) else x for x in inputs]


@torch.no_grad()
def evaluate(head: nn.Module, batches, device="cpu", autocast_dtype=None) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy without smoothing) of `head` over `batches`, streamed batch
    by batch (NaN for no batches): validation's two numbers, and test's first. The loss breaks ties
    of accuracy, which a small validation set near 100% has many of."""
    head.eval()
    metric, loss, count = None, 0.0, 0
    for maps, y in batches:
        with autocast_in(device, autocast_dtype):
            logits = head(_on(maps, device)).float().cpu()
        metric = metric or MulticlassAccuracy(num_classes=logits.shape[1], average="micro")
        metric.update(logits.argmax(1), y)
        loss, count = loss + float(F.cross_entropy(logits, y, reduction="sum")), count + len(y)
    if not count:
        return float("nan"), float("nan")
    return float(metric.compute()), loss / count


def _better(score: tuple[float, float], best: tuple[float, float] | None) -> bool:
    """Higher accuracy, or the same accuracy at a lower loss."""
    return best is None or score[0] > best[0] or (score[0] == best[0] and score[1] < best[1])


def train(head: nn.Module, batches, val_batches, recipe: Recipe, steps_per_epoch: int, device="cpu",
          desc: str = "head", autocast_dtype=None, augment=None) -> dict:
    """Train `head` by `recipe`. `batches()` yields (maps, labels) for one epoch, freshly shuffled
    (`steps_per_epoch` of them); `val_batches()` the validation set (None: nothing is chosen, every
    epoch runs and the last is kept); only head's parameters that require grad train; `augment(maps)`
    distorts each training batch. "Better on validation" is a higher accuracy, ties broken by a lower
    loss. The weights of the epoch best
    on validation are kept. Returns {"val_accuracy", "epoch", "epochs_run", "train_s", "history"}."""
    head.to(device)
    opt = optimizer(head, recipe)
    sched = schedule(opt, recipe, steps_per_epoch)
    best, best_state, best_epoch, history, start = None, None, recipe.epochs, [], time.time()
    kind = torch.device(device).type
    for epoch in range(1, recipe.epochs + 1):
        head.train()
        total = count = 0
        for maps, y in batches():
            maps = _on(maps, device)
            if augment is not None:
                maps = augment(maps)
            with autocast_in(kind, autocast_dtype):
                logits = head(maps)
            loss = F.cross_entropy(logits.float(), y.to(device), label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(y), count + len(y)
        score = None if val_batches is None else evaluate(head, val_batches(), device, autocast_dtype)
        history.append({"epoch": epoch, "loss": round(total / max(count, 1), 4),
                        "val_accuracy": None if score is None else score[0],
                        "val_loss": None if score is None else round(score[1], 4)})
        shown = "" if score is None else f" val {100 * score[0]:.2f}%"
        print(f"  {desc}: epoch {epoch}/{recipe.epochs} loss {total / max(count, 1):.4f}{shown}",
              end="\r", flush=True)
        if score is not None and _better(score, best):
            best, best_state, best_epoch = score, copy.deepcopy(head.state_dict()), epoch
        if score is not None and recipe.patience and epoch - best_epoch >= recipe.patience:
            break   # early stop: no better epoch for `patience` epochs
    print(" " * 79, end="\r", flush=True)
    if best_state is not None:
        head.load_state_dict(best_state)
    return {"val_accuracy": None if best is None else best[0], "val_loss": None if best is None else best[1],
            "epoch": best_epoch, "epochs_run": len(history), "train_s": round(time.time() - start, 1),
            "history": history}


def search(build, recipes: list[Recipe], fit, seed: int, desc: str = "head") -> tuple[Recipe, nn.Module, dict, list]:
    """Train `build()` (a fresh head, initialised under `seed`) once per recipe with `fit(head,
    recipe, seed, label)` (→ `train`'s dict) and keep the recipe best on validation (accuracy, then
    loss; the first on full ties: the grid is listed from the gentler settings up). Returns (recipe, its trained head, its fit, the grid
    as rows of recipe + val accuracy + epoch)."""
    best = None
    rows = []
    for recipe in recipes:
        torch.manual_seed(seed)
        head = build()
        label = desc if len(recipes) == 1 else f"{desc} [lr {recipe.lr:g} wd {recipe.weight_decay:g}]"
        fitted = fit(head, recipe, seed, label)
        rows.append({"lr": recipe.lr, "weight_decay": recipe.weight_decay, "val_accuracy": fitted["val_accuracy"],
                     "val_loss": fitted["val_loss"], "epoch": fitted["epoch"], "epochs_run": fitted["epochs_run"],
                     "train_s": fitted["train_s"]})
        score = (-1.0, 0.0) if fitted["val_accuracy"] is None else (fitted["val_accuracy"], fitted["val_loss"])
        if best is None or _better(score, best[0]):
            best = (score, recipe, head, fitted)
    return best[1], best[2], best[3], rows


def spread(values: list[float]) -> float:
    """The spread reported beside a mean over seeds: the sample standard deviation (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def compare(a: list[float], b: list[float]) -> dict:
    """a against b (accuracies over seeds): the difference of the means, and "tie" when it is not larger
    than the two spreads together (sd_a + sd_b), else "better" / "worse". With one seed each there is
    no spread to compare with, so any difference counts, and the verdict says so."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    margin = spread(a) + spread(b)
    verdict = "tie" if abs(diff) <= margin else ("better" if diff > 0 else "worse")
    if len(a) < 2 or len(b) < 2:
        verdict += " (one seed: no spread)"
    return {"difference": diff, "margin": margin, "verdict": verdict}


def search_and_repeat(build, recipes: list[Recipe], fit, seeds: list[int], score, desc: str = "head") -> tuple[dict, Recipe]:
    """`search` under the first seed, then the chosen recipe again under every other seed; each
    trained head scored once by `score(head)` (test). Returns (the row's numbers: mean ± spread of
    the scores and of the validation accuracies, per-seed lists, the recipe and its grid; the recipe)."""
    recipe, head, fitted, grid_rows = search(build, recipes, fit, seeds[0], desc)
    runs = [fitted]
    scores = [score(head)]
    for seed in seeds[1:]:
        torch.manual_seed(seed)
        again = build()
        runs.append(fit(again, recipe, seed, f"{desc} seed {seed}"))
        scores.append(score(again))
    vals = [r["val_accuracy"] for r in runs]
    known = [v for v in vals if v is not None]
    return ({"accuracy": statistics.fmean(scores), "accuracy_sd": spread(scores), "accuracies": scores,
             "val_accuracy": statistics.fmean(known) if known else None,
             "val_accuracy_sd": spread(known) if known else None, "val_accuracies": vals, "seeds": list(seeds),
             "best_epochs": [r["epoch"] for r in runs], "recipe": recipe.as_json(), "grid": grid_rows,
             # every run's time: the grid (the chosen point's first seed among it) and the other seeds
             "train_s": round(sum(g["train_s"] for g in grid_rows) + sum(r["train_s"] for r in runs[1:]), 1)},
            recipe)
