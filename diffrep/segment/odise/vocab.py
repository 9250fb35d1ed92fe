"""A vocabulary: the categories a panoptic model may name, each with one or more names (synonyms),
and whether it is a "thing" (countable instances) or "stuff".

    Vocabulary.parse("three,digit 3;grass,lawn")     # ';' between categories, ',' between synonyms
    Vocabulary.from_categories(panoptic_set.categories)

Category ids are kept from the data set's categories (so that predictions compare with its labels);
a parsed vocabulary numbers its categories 1, 2, … and marks them all as things unless a name is
prefixed by "stuff:" (for example `stuff:grass,lawn`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import DiffrepError

STUFF_PREFIX = "stuff:"
PROMPT = "a photo of {}."   # names are embedded inside a sentence, as ODISE's prompt does


@dataclass(frozen=True)
class Category:
    id: int
    names: tuple[str, ...]
    isthing: bool

    @property
    def name(self) -> str:
        return self.names[0]


class Vocabulary:
    def __init__(self, categories: list[Category], where: str = "the vocabulary"):
        if not categories:
            raise DiffrepError(f"{where} is empty: give at least one category")
        seen: dict[str, int] = {}
        for c in categories:
            for n in c.names:
                if not n.strip():
                    raise DiffrepError(f"{where} has an empty name (category {c.id}): remove the stray ',' or ';'")
                key = n.strip().lower()
                if key in seen:
                    raise DiffrepError(f"{where} names {n!r} twice (categories {seen[key]} and {c.id}); "
                                       "each name may belong to one category")
                seen[key] = c.id
        ids = [c.id for c in categories]
        if len(set(ids)) != len(ids):
            raise DiffrepError(f"{where} repeats a category id")
        self.categories = list(categories)

    @classmethod
    def parse(cls, text: str) -> "Vocabulary":
        cats = []
        for i, part in enumerate(text.split(";")):
            names = [n.strip() for n in part.split(",")]
            stuff = bool(names) and names[0].lower().startswith(STUFF_PREFIX)
            if stuff:
                names[0] = names[0][len(STUFF_PREFIX):].strip()
            cats.append(Category(i + 1, tuple(names), not stuff))
        return cls(cats, f"--vocab {text!r}")

    @classmethod
    def from_categories(cls, categories: list[dict], where: str = "the data set's categories") -> "Vocabulary":
        return cls([Category(c["id"], (c["name"], *c.get("synonyms", [])), bool(c.get("isthing", 1)))
                    for c in categories], where)

    def subset(self, ids) -> "Vocabulary":
        keep = set(ids)
        return Vocabulary([c for c in self.categories if c.id in keep])

    def __len__(self) -> int:
        return len(self.categories)

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.categories]

    def index_of(self, category_id: int) -> int:
        for i, c in enumerate(self.categories):
            if c.id == category_id:
                return i
        raise DiffrepError(f"category id {category_id} is not in the vocabulary {self.ids}")

    def name_table(self, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
        """(every name's embedding, N×D unit vectors; the index of the category each name belongs to)."""
        names = [(i, n) for i, c in enumerate(self.categories) for n in c.names]
        embeddings = text_encoder.names([PROMPT.format(n) for _, n in names])
        return embeddings, torch.tensor([i for i, _ in names])

    def as_json(self) -> list[dict]:
        return [{"id": c.id, "names": list(c.names), "isthing": c.isthing} for c in self.categories]
