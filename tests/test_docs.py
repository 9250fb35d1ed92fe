"""The documentation is checked like code.

- `mkdocs build --strict` succeeds: mkdocs.yml's `validation` settings turn a broken link or anchor,
  a page missing from the nav and a nav entry without its page into warnings, and --strict turns
  warnings into a failure.
- Every public name (each name in each `__all__` of the package and its subpackages) has a docstring,
  which the API reference is generated from. The rule: a class or function needs a docstring of its
  own (not one inherited, and not the signature a dataclass writes for itself); a module needs a module
  docstring; other values (constants such as `PRESETS`, `PEAK`, `BUNDLED`, `PRECISIONS`,
  `WEIGHT_DECAYS`), which cannot carry a docstring of their own in Python, are exempt; the API
  reference shows one that has an attribute docstring (a string right after the assignment).
- Every `diffrep …` command line in a ```bash block of the docs and the README parses with the real
  argument parser (`diffrep.cli.build_parser`), so Getting started and the method pages cannot drift
  from the tool's flags.
- Every Python block of Getting started and the README runs, with the whole-run entry points
  (`run_sweep`, `train_segmenter`, `run_match_eval`) replaced by recorders that check what they are
  given; the `diffrep info` listing Getting started shows is the command's real output.
- Every relative link in README.md points to a file that exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import diffrep
from diffrep.cli import build_parser

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


def test_the_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: `scripts/setup.sh --test` installs the docs extra")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "Aborted" in line)
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "diffrep.html").is_file()


def _public_packages() -> list:
    names = ["diffrep"] + [m.name for m in pkgutil.walk_packages(diffrep.__path__, "diffrep.") if m.ispkg]
    return [importlib.import_module(n) for n in names]


def _lacks_docstring(obj) -> bool:
    if inspect.ismodule(obj):
        return not (obj.__doc__ or "").strip()
    if inspect.isclass(obj):
        own = (obj.__dict__.get("__doc__") or "").strip()
        return not own or own.startswith(obj.__name__ + "(")   # a dataclass's generated signature is no docstring
    if inspect.isroutine(obj):
        return not (inspect.getdoc(obj) or "").strip()
    return False   # a constant: exempt (see the module docstring)


def test_every_public_name_has_a_docstring():
    missing = set()
    for package in _public_packages():
        for name in getattr(package, "__all__", ()):
            obj = getattr(package, name)
            if _lacks_docstring(obj):
                where = inspect.getmodule(obj).__name__ if not inspect.ismodule(obj) else obj.__name__
                missing.add(f"{name} ({where})")
    assert not missing, "public names without a docstring: " + ", ".join(sorted(missing))


def _bash_blocks(text: str, language: str = "bash") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _command_lines(block: str) -> list[list[str]]:
    """Each `diffrep` invocation in a bash block (continued lines joined, comments dropped, `a && b`
    split), as its argument list."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        segment: list[str] = []
        for token in tokens + ["&&"]:
            if token != "&&":
                segment.append(token)
                continue
            if segment and Path(segment[0]).name == "diffrep":
                commands.append(segment[1:])
            elif segment[:1] == ["torchrun"] and "diffrep.cli" in segment:
                commands.append(segment[segment.index("diffrep.cli") + 1:])
            segment = []
    return commands


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


def test_getting_started_has_commands_to_check():
    commands = [c for b in _bash_blocks((DOCS / "getting-started.md").read_text()) for c in _command_lines(b)]
    assert len(commands) >= 8, commands
    assert ["sweep", "--model", "mnist-ddpm", "--data", "mnist", "--out", "runs/sweep"] in commands


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_docs_parses(page):
    parser = build_parser()
    for block in _bash_blocks(page.read_text()):
        for args in _command_lines(block):
            try:
                parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{page.relative_to(ROOT)}: `diffrep {shlex.join(args)}` does not parse "
                            "(the message above says why)")


def test_the_readme_links_to_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to its docs pages"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.parametrize("page", [DOCS / "getting-started.md", ROOT / "README.md"], ids=lambda p: p.name)
def test_the_python_examples_run(page, monkeypatch, tmp_path):
    """The examples' features are really extracted; a whole run (minutes) is only called: it must get
    its own config type and a run folder."""
    calls = []

    def recorder(name, config_type):
        def run(cfg, out):
            assert isinstance(cfg, config_type) and isinstance(out, str), (name, cfg, out)
            calls.append(name)
        return run
    monkeypatch.setattr(diffrep, "run_sweep", recorder("run_sweep", diffrep.SweepConfig))
    monkeypatch.setattr(diffrep, "train_segmenter", recorder("train_segmenter", diffrep.SegConfig))
    monkeypatch.setattr(diffrep, "run_match_eval", recorder("run_match_eval", diffrep.MatchEvalConfig))
    monkeypatch.chdir(tmp_path)
    blocks = _bash_blocks(page.read_text(), "python")
    assert blocks, f"{page.name} has a Python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(page), "exec"), namespace)
        assert set(namespace["feats"]) == {"mid_block", "up_blocks.0"}
        assert namespace["feats"]["mid_block"].shape[0] == 64
    assert "run_sweep" in calls


def test_the_info_listing_is_what_the_command_prints(capsys):
    page = (DOCS / "getting-started.md").read_text()
    listing = next(b for b in _bash_blocks(page, "text") if b.startswith("mnist-ddpm:"))
    from diffrep.cli import main
    main(["info", "--model", "mnist-ddpm"])
    printed = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    for line in listing.splitlines():
        if line.strip() != "…":
            assert " ".join(line.split()) in printed, f"getting-started.md shows a line `diffrep info` does not print: {line}"
