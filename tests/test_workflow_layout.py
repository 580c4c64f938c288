"""The shipped graphs read left to right: separate groups holding every node, no overlaps, no wire across a node,
everything visible at the saved view (tests/workflow_check.py's layout_problems; bench/comfy_frontend.py runs the
same check on the sizes ComfyUI's frontend gives the nodes, and takes screenshots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workflow_check import CORE_NODES, defs_from_classes, layout_problems, wire_points

FOLDER = Path(__file__).resolve().parents[1] / "workflows"
NAMES = ("joygen_composable", "joygen_all_in_one", "joygen_audio_only", "joygen_video_driven")


@pytest.fixture(scope="module")
def defs(pack):
    return {**CORE_NODES, **defs_from_classes(pack.NODE_CLASS_MAPPINGS)}


@pytest.mark.parametrize("name", NAMES)
def test_shipped_graph_layout(name, defs):
    ui = json.loads((FOLDER / f"{name}.json").read_text())
    assert layout_problems(ui, defs) == []


def _graph(nodes, links, groups, ds=None):
    return {"nodes": [{"id": i, "type": "X", "pos": list(p), "size": list(s)} for i, p, s in nodes],
            "links": links, "groups": [{"title": t, "bounding": list(b), "font_size": 24} for t, b in groups],
            "extra": {"ds": ds or {"scale": 1.0, "offset": [0, 0]}}}


def test_layout_check_finds_each_fault():
    good = _graph([(1, (20, 80), (200, 100)), (2, (400, 80), (200, 100))], [[1, 1, 0, 2, 0, "IMAGE"]],
                  [("a", (0, 0, 240, 200)), ("b", (380, 0, 240, 200))], {"scale": 1.0, "offset": [100, 120]})
    assert layout_problems(good) == []
    across = _graph([(1, (20, 80), (200, 100)), (2, (700, 80), (200, 100)), (3, (380, 60), (200, 100))],
                    [[1, 1, 0, 2, 0, "IMAGE"]], [("a", (0, 0, 920, 220))])
    assert any("drawn across node(s) [3]" in p for p in layout_problems(across))
    backwards = _graph([(1, (400, 80), (200, 100)), (2, (20, 80), (200, 100))], [[1, 1, 0, 2, 0, "IMAGE"]],
                       [("a", (0, 0, 640, 200))])
    assert any("not to its right" in p for p in layout_problems(backwards))
    overlapping = _graph([(1, (20, 80), (200, 100)), (2, (100, 150), (200, 100))], [],
                         [("a", (0, 0, 240, 200)), ("b", (80, 100, 240, 200))])
    found = layout_problems(overlapping)
    assert any("nodes 1 and 2 overlap" in p for p in found) and any("groups 'a' and 'b'" in p for p in found)
    assert any("node 2" in p and "exactly one group" in p for p in found)
    under_title = _graph([(1, (20, 40), (200, 100))], [], [("a", (0, 0, 240, 200))])
    assert any("exactly one group" in p for p in layout_problems(under_title))  # title bar under the group's title
    hidden = _graph([(1, (20, 80), (200, 100))], [], [("a", (0, 0, 240, 200))], {"scale": 1.0, "offset": [-100, 0]})
    assert any("not (wholly) visible" in p for p in layout_problems(hidden))
    shown = _graph([(1, (20, 80), (200, 100))], [], [("a", (0, 0, 240, 200))], {"scale": 1.0, "offset": [100, 120]})
    assert layout_problems(shown) == []


def test_wire_is_litegraphs_spline():
    points = wire_points((0, 0), (400, 300))
    assert points[0] == (0, 0) and points[-1] == (400, 300)
    assert all(0 <= y <= 300 for _, y in points) and points[32] == pytest.approx((200, 150))
