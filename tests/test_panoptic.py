"""Panoptic data: the COCO-panoptic reader and writer, its errors, and the bundled panoptic scenes."""

from __future__ import annotations

import importlib
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from diffrep import DiffrepError
from diffrep.data import load_panoptic
from diffrep.data.coco_panoptic import PanopticSet, id_to_rgb, rgb_to_id, write_split
from diffrep.data.panoptic_scenes import (BANDS, MIN_AREA, STUFF, _digit_pool, categories, panoptic_scenes_folder,
                                          scene)
from diffrep.segment.odise.evaluate import images_of


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "pan"
    for split in ("train", "test"):
        write_split(root, split, (scene(split, i) for i in range(4)), categories())
    return root


def test_segment_ids_survive_the_rgb_encoding():
    ids = np.array([[0, 1, 255], [256, 65536 + 7, 1234567]])
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)


def test_written_scenes_read_back_exactly_with_captions_and_categories(small_folder):
    name, image, ids, segments, caption = scene("test", 2)
    item = PanopticSet(small_folder, "test")[2]
    assert item.name == f"{name}.png" and item.caption == caption
    assert np.array_equal(item.segment_ids.numpy(), ids) and item.segments == segments
    assert np.allclose(((item.image.permute(1, 2, 0).numpy() + 1) * 127.5), image, atol=1e-3)
    cat, inst = item.category_map()
    for sid, c in segments.items():
        assert (cat[inst == sid] == c).all()
    assert (cat[inst == 0] == -1).all()
    names = PanopticSet(small_folder, "train").names()
    assert names[3] == ["three", "digit 3", "3"] and names[10][0] == "brick wall"


def test_scenes_hold_several_things_and_stuff_regions_and_name_them_all():
    things = stuff = 0
    for i in range(20):
        _, _, ids, segments, caption = scene("train", i)
        t = [c for s, c in segments.items() if c <= 10]
        s = [c for s, c in segments.items() if c > 10]
        assert len(s) >= 2 and len(t) >= 1 and 0 not in segments
        for sid in segments:
            assert (ids == sid).sum() >= (MIN_AREA if segments[sid] <= 10 else 1)
        for c in s:
            assert list(STUFF)[c - 11] in caption
        things, stuff = things + len(t), stuff + len(s)
    assert things > 20 and stuff > 40   # more than one instance per scene on average


def test_splits_share_no_digit_and_no_texture_band():
    pools = {split: _digit_pool(split)[0].reshape(-1, 28 * 28) for split in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        joined = np.concatenate([pools[a], pools[b]])
        assert len(np.unique(joined, axis=0)) == len(np.unique(pools[a], axis=0)) + len(np.unique(pools[b], axis=0))
    spans = sorted(BANDS.values())
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


def _json(root, split="test"):
    path = root / "annotations" / f"panoptic_{split}.json"
    return path, json.loads(path.read_text())


def test_a_segment_id_missing_from_the_json_is_named_with_its_file(small_folder):
    path, raw = _json(small_folder)
    dropped = raw["annotations"][1]["segments_info"].pop()
    path.write_text(json.dumps(raw))
    with pytest.raises(DiffrepError, match=rf"test-000001.png: segment ids \[{dropped['id']}\] are in the PNG"):
        PanopticSet(small_folder, "test").check_all()


def test_a_category_outside_the_categories_is_refused_when_opened(small_folder):
    path, raw = _json(small_folder)
    raw["annotations"][0]["segments_info"][0]["category_id"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(DiffrepError, match="panoptic_test.json.*category id 99, which is not among the categories"):
        PanopticSet(small_folder, "test")


def test_a_mask_of_another_size_than_its_image_is_named(small_folder):
    png = small_folder / "panoptic" / "test" / "test-000000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
    with pytest.raises(DiffrepError, match="test-000000.png: its size 32×32 differs from its image"):
        PanopticSet(small_folder, "test")[0]


def test_a_missing_split_or_folder_says_what_there_is(small_folder, tmp_path):
    with pytest.raises(DiffrepError, match="panoptic_val.json is missing.*it has test, train"):
        load_panoptic(str(small_folder), "val")
    with pytest.raises(DiffrepError, match="does not exist"):
        load_panoptic(str(tmp_path / "nowhere"), "train")


def test_rewriting_a_split_replaces_it_whole(small_folder):
    write_split(small_folder, "test", (scene("test", i) for i in range(2)), categories())
    assert len(PanopticSet(small_folder, "test")) == 2
    assert len(list((small_folder / "panoptic" / "test").iterdir())) == 2
    assert not list(small_folder.glob(".writing-*"))


def test_a_failed_write_leaves_the_old_split_as_it_was(small_folder):
    def broken():
        yield scene("test", 0)
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_split(small_folder, "test", broken(), categories())
    assert len(PanopticSet(small_folder, "test")) == 4 and not list(small_folder.glob(".writing-*"))


def test_the_bundled_folder_is_written_once_and_read_like_any_other(tmp_path, monkeypatch):
    ps = importlib.import_module("diffrep.data.panoptic_scenes")   # the package's name is the function's
    monkeypatch.setattr(ps, "DEFAULT_SIZES", {"train": 3, "val": 2, "test": 2})
    root = panoptic_scenes_folder(64, str(tmp_path / "bundled"))
    assert [len(PanopticSet(root, s)) for s in ("train", "val", "test")] == [3, 2, 2]
    stamp = (root / "annotations" / "panoptic_train.json").stat().st_mtime_ns
    panoptic_scenes_folder.cache_clear()
    panoptic_scenes_folder(64, str(root))
    assert (root / "annotations" / "panoptic_train.json").stat().st_mtime_ns == stamp


def test_two_commands_writing_the_bundled_folder_at_once_both_read_it_whole(tmp_path, monkeypatch):
    """Two runs started together on a fresh machine: the second waits for the first's writing."""
    ps = importlib.import_module("diffrep.data.panoptic_scenes")
    monkeypatch.setattr(ps, "DEFAULT_SIZES", {"train": 3, "val": 2, "test": 2})
    slow = ps.scene
    monkeypatch.setattr(ps, "scene", lambda *a, **k: (time.sleep(0.05), slow(*a, **k))[1])  # overlap the writers
    errors = []

    def write():
        try:
            ps.panoptic_scenes_folder.__wrapped__(64, str(tmp_path / "bundled"))
        except Exception as err:   # noqa: BLE001 - the test reports any failure of either writer
            errors.append(err)
    writers = [threading.Thread(target=write) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert errors == []
    root = tmp_path / "bundled"
    assert [len(PanopticSet(root, s)) for s in ("train", "val", "test")] == [3, 2, 2]
    assert not list(root.glob(".writing-*"))


def test_items_fitted_to_a_model_match_the_files_read_at_that_side(small_folder):
    """The live path (items resized in memory) and the cached path (files read at the side) must feed
    a model the same pixels, or a run scores differently in training than in `eval`."""
    data = PanopticSet(small_folder, "test")
    files = data.image_files(3, 32)
    live = images_of([data[i] for i in range(len(data))], 32)
    assert live.shape == (len(data), 3, 32, 32)
    assert torch.equal(live, torch.stack([files[i] for i in range(len(data))]))
