"""diffrep: pre-trained diffusion models as representation learners.

```python
import diffrep
backbone = diffrep.load_backbone("mnist-ddpm")
feats = diffrep.Featurizer(backbone).extract(diffrep.data.load("mnist", "test").images[:64], t=50,
                                             blocks=["mid_block"])
diffrep.run_sweep(diffrep.SweepConfig(), "runs/sweep")        # DDAE
diffrep.train_segmenter(diffrep.SegConfig(), "runs/seg")      # DDPM-Seg
diffrep.run_match_eval(diffrep.MatchEvalConfig(), "runs/corr")  # DIFT
diffrep.run_classify(diffrep.ClassifyConfig(), "runs/cls")      # GDC / DifFormer / DifFeed
diffrep.run_panoptic_train(diffrep.PanopticConfig(model="runs/t2i"), "runs/pan")   # ODISE
```
"""

from . import data
from .classify.ddae import SweepConfig, run_sweep
from .classify.gdc import ClassifyConfig, run_classify
from .core import Backbone, BlockInfo, Featurizer, load_backbone
from .correspond.dift import DiffusionDescriber, MatchEvalConfig, match, run_match_eval, run_match_sweep
from .errors import DiffrepError
from .features import Cell, DiffusionFeatures
from .pretrain import PretrainConfig, pretrain
from .segment.ddpm_seg import EvalConfig, SegConfig, Segmenter, evaluate, train_segmenter
from .segment.odise import PanopticConfig, run_panoptic_train

__all__ = ["Backbone", "BlockInfo", "Cell", "ClassifyConfig", "DiffrepError", "DiffusionDescriber", "DiffusionFeatures", "EvalConfig",
           "Featurizer", "MatchEvalConfig", "PanopticConfig", "PretrainConfig", "SegConfig", "Segmenter", "SweepConfig", "data",
           "evaluate", "load_backbone", "match", "pretrain", "run_classify", "run_match_eval", "run_match_sweep",
           "run_panoptic_train", "run_sweep",
           "train_segmenter"]
__version__ = "0.1.0"
