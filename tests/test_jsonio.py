"""Result JSON is written whole: a failed write leaves the previous file as it was."""

from __future__ import annotations

import json

import pytest

from diffrep.runs import write_json


def test_write_json_creates_folders_and_round_trips(tmp_path):
    path = write_json(tmp_path / "a" / "b" / "result.json", {"miou": 0.5, "name": "σ-test"})
    assert json.loads(path.read_text()) == {"miou": 0.5, "name": "σ-test"}


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_json(tmp_path / "result.json", {"done": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"done": True}
