"""Features: one source interface for diffusion features and the baselines, cells, the feature store,
and reading maps at pixels."""

from .cell import Cell
from .collect import bytes_per_image, collect_features, default_shard_size, extract_to_store, maps_in_store, pooled
from .shards import FeatureStore, ShardedArray, ShardWriter, as_tensor, in_memory, memory_budget
from .sampling import PEAK, features_at, sample_at, upsample_concat
from .sources import Daisy, DiffusionFeatures, PixelPatches, RawPixels, patches, total_channels
from .store import ImageCache, cached, load_features, read_meta, save_features

__all__ = ["Cell", "Daisy", "DiffusionFeatures", "FeatureStore", "ImageCache", "PEAK", "PixelPatches", "RawPixels", "ShardWriter",
           "ShardedArray", "as_tensor", "bytes_per_image", "in_memory", "memory_budget", "cached", "collect_features", "default_shard_size", "extract_to_store", "maps_in_store",
           "pooled",
           "features_at", "load_features", "patches", "read_meta", "sample_at", "save_features", "total_channels",
           "upsample_concat"]
