"""volseg.clicks: JSON/CSV, index and world coordinates, and every way a clicks file can be wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest

from volseg.clicks import Click, load_clicks, make_click, parse_label, save_clicks, validate_clicks
from volseg.errors import ClickError, InputError
from volseg.image import Image

# axis 0 along world +y, axis 1 along world -x, spacing (2, 3, 4): world and index clearly differ
VOL = Image(np.zeros((10, 12, 8, 1)), spacing=(2, 3, 4), origin=(10, 20, 30),
            direction=[[0, -1, 0], [1, 0, 0], [0, 0, 1]])
RASTER = Image.from_array(np.zeros((20, 30, 3), np.uint8), channel_axis=-1)


def write_json(tmp_path, data, name="clicks.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def write_csv(tmp_path, text, name="clicks.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_index(tmp_path):
    path = write_json(tmp_path, {"coordinates": "index", "clicks": [
        {"position": [3, 4, 5], "label": "positive", "object": 2},
        {"position": [1.4, 0, 7], "label": "neg", "frame": None},
    ]})
    clicks = load_clicks(path, VOL)
    assert clicks == [Click((3.0, 4.0, 5.0), True, 2, None), Click((1.4, 0.0, 7.0), False, 1, None)]
    assert clicks[1].voxel() == (1, 0, 7)


def test_json_bare_list_and_label_spellings(tmp_path):
    labels = ["pos", "fg", "1", True, 1, "+", "negative", "bg", "0", False, "false", "-1"]
    path = write_json(tmp_path, [{"position": [1, 2], "label": v} for v in labels])
    assert [c.positive for c in load_clicks(path, RASTER)] == [True] * 6 + [False] * 6
    assert load_clicks(write_json(tmp_path, [{"position": [1, 2], "positive": False}], "p.json"))[0].positive is False


@pytest.mark.parametrize("space, flip", [("world", 1), ("world-ras", -1)])
def test_json_world(tmp_path, space, flip):
    idx = np.array([[2, 3, 1], [9, 11, 7]])
    world = VOL.index_to_world(idx) * [flip, flip, 1]
    path = write_json(tmp_path, {"coordinates": space, "clicks": [
        {"position": w.tolist(), "label": "positive"} for w in world]})
    np.testing.assert_allclose([c.position for c in load_clicks(path, VOL)], idx, atol=1e-9)


def test_csv_index_world_and_per_row_space(tmp_path):
    path = write_csv(tmp_path, "i,j,k,label,object\n3,4,5,positive,1\n1,2,3,negative,2\n")
    assert load_clicks(path, VOL) == [Click((3.0, 4.0, 5.0), True, 1), Click((1.0, 2.0, 3.0), False, 2)]
    w = VOL.index_to_world([2, 3, 1])[0]
    path = write_csv(tmp_path, f" X , Y , Z ,Label\n{w[0]},{w[1]},{w[2]},fg\n", "world.csv")
    np.testing.assert_allclose(load_clicks(path, VOL)[0].position, [2, 3, 1], atol=1e-9)
    path = write_csv(tmp_path, f"x,y,z,label,space\n{-w[0]},{-w[1]},{w[2]},fg,world-ras\n", "ras.csv")
    np.testing.assert_allclose(load_clicks(path, VOL)[0].position, [2, 3, 1], atol=1e-9)


def test_csv_with_byte_order_mark_and_frames(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("i,j,label,frame\n5,6,pos,3\n".encode("utf-8-sig"))
    clicks = load_clicks(path, RASTER)
    assert clicks == [Click((5.0, 6.0), True, 1, 3)]
    validate_clicks(clicks, RASTER.shape, frames=4)
    with pytest.raises(ClickError, match="frame 3, the video has 3"):
        validate_clicks(clicks, RASTER.shape, frames=3)
    with pytest.raises(ClickError, match="no frame"):
        validate_clicks([make_click([1, 1])], RASTER.shape, frames=3)


def test_json_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(json.dumps([{"position": [5, 6], "label": "positive"}]).encode("utf-8-sig"))
    assert load_clicks(path, RASTER) == [Click((5.0, 6.0), True, 1, None)]


def test_save_load_round_trip(tmp_path):
    clicks = [make_click([1.5, 2, 3], "pos", 1), make_click([4, 5, 6], "neg", 3, frame=2)]
    save_clicks(clicks, tmp_path / "out.json")
    assert load_clicks(tmp_path / "out.json") == clicks


@pytest.mark.parametrize("position", [[1, float("nan"), 2], [float("inf"), 1, 1]])
def test_nan_json(tmp_path, position):
    path = write_json(tmp_path, [{"position": position, "label": "pos"}])  # json writes NaN/Infinity
    with pytest.raises(ClickError, match="NaN or Inf"):
        load_clicks(path, VOL)


def test_nan_csv(tmp_path):
    with pytest.raises(ClickError, match="NaN or Inf"):
        load_clicks(write_csv(tmp_path, "i,j,k,label\n1,nan,2,pos\n"), VOL)
    with pytest.raises(ClickError, match="non-numeric"):
        load_clicks(write_csv(tmp_path, "i,j,k,label\n1,,2,pos\n", "blank.csv"), VOL)


def test_wrong_number_of_coordinates(tmp_path):
    with pytest.raises(ClickError, match="2 coordinates, the image has 3 axes"):
        load_clicks(write_json(tmp_path, [{"position": [1, 2], "label": "pos"}]), VOL)
    with pytest.raises(ClickError, match="3 world coordinates, the image has 2 axes"):
        load_clicks(write_json(tmp_path, {"coordinates": "world", "clicks": [{"position": [1, 2, 3], "label": 1}]},
                               "w.json"), RASTER)
    with pytest.raises(ClickError, match="not a list of numbers"):
        load_clicks(write_json(tmp_path, [{"position": "123", "label": "pos"}], "s.json"))


@pytest.mark.parametrize("position", [[10, 0, 0], [0, 0, -0.6], [0, 11.5, 0]])
def test_outside_the_image(tmp_path, position):
    with pytest.raises(ClickError, match="outside the image of shape"):
        load_clicks(write_json(tmp_path, [{"position": position, "label": "pos"}]), VOL)


def test_edge_clicks_round_inside(tmp_path):
    clicks = load_clicks(write_json(tmp_path, [{"position": [-0.4, 11.4, 7.2], "label": "pos"}]), VOL)
    assert clicks[0].voxel() == (0, 11, 7)


@pytest.mark.parametrize("row, message", [
    ({"position": [1, 2, 3], "label": "maybe"}, "unknown click label 'maybe'"),
    ({"position": [1, 2, 3], "label": 2}, "unknown click label 2"),
    ({"position": [1, 2, 3]}, "has no label"),
    ({"position": [1, 2, 3], "label": "pos", "object": 0}, "object id must be 1 or more"),
    ({"position": [1, 2, 3], "label": "pos", "object": "liver"}, "object id 'liver' is not an integer"),
    ({"position": [1, 2, 3], "label": "pos", "frame": 2.5}, "frame 2.5 is not an integer"),
])
def test_bad_fields(tmp_path, row, message):
    with pytest.raises(ClickError, match=message):
        load_clicks(write_json(tmp_path, [row]), VOL)


def test_bad_frame_in_csv(tmp_path):
    with pytest.raises(ClickError, match="frame 'x' is not an integer"):
        load_clicks(write_csv(tmp_path, "i,j,label,frame\n1,2,pos,x\n"))


def test_empty_and_malformed_files(tmp_path):
    with pytest.raises(ClickError, match="no clicks"):
        load_clicks(write_json(tmp_path, {"coordinates": "index", "clicks": []}), VOL)
    with pytest.raises(ClickError, match="no clicks"):
        load_clicks(write_csv(tmp_path, "i,j,k,label\n"), VOL)
    with pytest.raises(ClickError, match="'position'"):
        load_clicks(write_json(tmp_path, {"points": [[1, 2, 3]]}, "other.json"), VOL)
    with pytest.raises(ClickError, match="CSV needs columns"):
        load_clicks(write_csv(tmp_path, "a,b,label\n1,2,pos\n", "cols.csv"), VOL)
    with pytest.raises(ClickError, match="unknown coordinate space 'voxel'"):
        load_clicks(write_json(tmp_path, {"coordinates": "voxel", "clicks": [{"position": [1, 2, 3], "label": 1}]},
                               "sp.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_clicks(tmp_path / "broken.json", VOL)
    with pytest.raises(InputError, match="does not exist"):
        load_clicks(tmp_path / "missing.json", VOL)


def test_world_clicks_need_the_image(tmp_path):
    with pytest.raises(ClickError, match="need the image's geometry"):
        load_clicks(write_json(tmp_path, {"coordinates": "world", "clicks": [{"position": [1, 2, 3], "label": 1}]}))


def test_parse_label_and_make_click():
    assert parse_label(" Positive ") is True and parse_label("BG") is False
    with pytest.raises(ClickError):
        parse_label("yes")
    with pytest.raises(ClickError, match="not a list of numbers"):
        make_click(None)
    assert make_click([1, 2], object="3").object == 3
