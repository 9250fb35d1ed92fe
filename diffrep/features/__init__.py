"""Features: one source interface for diffusion features and the baselines, cells, the feature store,
and reading maps at pixels."""

from .cell import Cell
from .collect import collect_features
from .sampling import PEAK, features_at, sample_at, upsample_concat
from .sources import Daisy, DiffusionFeatures, RawPixels, patches, total_channels
from .store import ImageCache, cached, load_features, read_meta, save_features

__all__ = ["Cell", "Daisy", "DiffusionFeatures", "ImageCache", "PEAK", "RawPixels", "cached", "collect_features",
           "features_at", "load_features", "patches", "read_meta", "sample_at", "save_features", "total_channels",
           "upsample_concat"]
