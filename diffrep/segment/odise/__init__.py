"""ODISE: open-vocabulary panoptic segmentation from a text-to-image diffusion model's features
(a Mask2Former mask generator whose masks are named by text embeddings of category names)."""
