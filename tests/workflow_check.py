"""Checks a workflow (ComfyUI UI format, and its API-format copy) against node definitions.

Definitions come either from the pack's node classes plus ``CORE_NODES`` (the core nodes the
shipped workflows use, copied from ComfyUI's ``comfy_extras/nodes_video.py``, ``nodes_audio.py`` and
``nodes.py``; ComfyUI is not installed in CI), or from a live server's ``GET /object_info``
(``bench/comfy_smoke.py``). Every check returns a list of readable problems; empty means it fits.

UI-format conventions reproduced from ComfyUI's frontend (1.3x) and its shipped templates:
``widgets_values`` lists the widget inputs (INT, FLOAT, STRING, BOOLEAN, choice lists) in
definition order, required before optional; an INT named ``seed`` / ``noise_seed`` (or with
``control_after_generate``) is followed by its control value; an upload combo is followed by its
upload widgets (video/image: one value, audio: two). A node's ``inputs`` lists its sockets in
definition order (optional ones with ``shape`` 7), then the widget inputs that are linked, each
with ``widget: {name}``. A link is ``[id, from_node, from_slot, to_node, to_slot, type]`` with the
slots indexing those ``inputs`` / ``outputs`` lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
UPLOAD_EXTRAS = {"video_upload": 1, "image_upload": 1, "animated_image_upload": 1, "audio_upload": 2}
NOTE_TYPES = ("Note", "MarkdownNote")


@dataclass
class InputDef:
    name: str
    kind: str  # a type name, or "COMBO" with ``choices``
    opts: dict[str, Any]
    required: bool
    choices: tuple[str, ...] | None = None

    @property
    def is_widget(self) -> bool:
        return self.kind in WIDGET_KINDS

    @property
    def extras(self) -> int:
        """Hidden widget values the frontend stores after this widget's own value."""
        if self.kind == "INT" and (self.opts.get("control_after_generate") or self.name in ("seed", "noise_seed")):
            return 1
        return max((n for key, n in UPLOAD_EXTRAS.items() if self.opts.get(key)), default=0)


@dataclass
class NodeDef:
    inputs: list[InputDef]
    outputs: list[tuple[str, str]]  # (name, type)
    output_node: bool = False

    def input(self, name: str) -> InputDef | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def sockets(self) -> list[InputDef]:
        return [i for i in self.inputs if not i.is_widget]

    @property
    def widgets(self) -> list[InputDef]:
        return [i for i in self.inputs if i.is_widget]


def _input_def(name: str, spec: Any, required: bool) -> InputDef:
    kind = spec[0] if isinstance(spec, (list, tuple)) else spec
    opts = dict(spec[1]) if isinstance(spec, (list, tuple)) and len(spec) > 1 and spec[1] else {}
    if isinstance(kind, (list, tuple)):
        return InputDef(name, "COMBO", opts, required, tuple(kind))
    if kind == "COMBO":
        options = opts.get("options")
        return InputDef(name, "COMBO", opts, required, tuple(options) if options is not None else None)
    return InputDef(name, str(kind), opts, required)


def node_def(input_types: dict, outputs: list[tuple[str, str]], output_node: bool = False) -> NodeDef:
    """A definition from an INPUT_TYPES-style dict (required, then optional; hidden ignored)."""
    inputs = [_input_def(n, s, True) for n, s in input_types.get("required", {}).items()]
    inputs += [_input_def(n, s, False) for n, s in input_types.get("optional", {}).items()]
    return NodeDef(inputs, outputs, output_node)


def defs_from_classes(mappings: dict[str, type]) -> dict[str, NodeDef]:
    """Definitions of classic-API node classes (``NODE_CLASS_MAPPINGS``)."""
    out = {}
    for node_type, cls in mappings.items():
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        out[node_type] = node_def(cls.INPUT_TYPES(), list(zip(names, cls.RETURN_TYPES)),
                                  bool(getattr(cls, "OUTPUT_NODE", False)))
    return out


def defs_from_object_info(info: dict) -> dict[str, NodeDef]:
    """Definitions from a live ComfyUI's ``GET /object_info``."""
    out = {}
    for node_type, d in info.items():
        outputs = list(zip(d.get("output_name") or d["output"], d["output"]))
        out[node_type] = node_def(d.get("input", {}), [(n, t if isinstance(t, str) else "COMBO") for n, t in outputs],
                                  bool(d.get("output_node")))
    return out


# What the shipped workflows use from ComfyUI core (read from ComfyUI 0.8 sources; the file lists
# of LoadVideo / LoadAudio are the input folder's files, so they are left open here: None).
CORE_NODES: dict[str, NodeDef] = {
    "LoadVideo": NodeDef([InputDef("file", "COMBO", {"video_upload": True}, True, None)], [("VIDEO", "VIDEO")]),
    "LoadAudio": NodeDef([InputDef("audio", "COMBO", {"audio_upload": True}, True, None)], [("AUDIO", "AUDIO")]),
    "GetVideoComponents": NodeDef([InputDef("video", "VIDEO", {}, True)],
                                  [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    "CreateVideo": NodeDef([InputDef("images", "IMAGE", {}, True),
                            InputDef("fps", "FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}, True),
                            InputDef("audio", "AUDIO", {}, False)], [("VIDEO", "VIDEO")]),
    "SaveVideo": NodeDef([InputDef("video", "VIDEO", {}, True),
                          InputDef("filename_prefix", "STRING", {"default": "video/ComfyUI"}, True),
                          InputDef("format", "COMBO", {"default": "auto"}, True, ("auto", "mp4")),
                          InputDef("codec", "COMBO", {"default": "auto"}, True, ("auto", "h264"))], [],
                         output_node=True),
    "PreviewImage": NodeDef([InputDef("images", "IMAGE", {}, True)], [], output_node=True),
}
MEDIA_SUFFIXES = {("LoadVideo", "file"): (".mp4", ".mov", ".webm", ".mkv", ".avi"),
                  ("LoadAudio", "audio"): (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".mp4")}


@dataclass
class Problems:
    items: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def check_value(inp: InputDef, value: Any, choices: tuple[str, ...] | set[str] | None = None) -> str | None:
    """Why ``value`` does not fit the widget input, or None. ``choices`` replaces the definition's list."""
    if inp.kind == "COMBO":
        allowed = choices if choices is not None else inp.choices
        if not isinstance(value, str):
            return f"{value!r} is not a choice string"
        if allowed is not None and value not in allowed:
            return f"{value!r} is not one of {sorted(allowed)}"
        return None
    if inp.kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if inp.kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{value!r} is not a number"
    if inp.kind == "INT" and not float(value).is_integer():
        return f"{value!r} is not an integer"
    lo, hi = inp.opts.get("min"), inp.opts.get("max")
    if lo is not None and value < lo:
        return f"{value!r} is below the minimum {lo}"
    if hi is not None and value > hi:
        return f"{value!r} is above the maximum {hi}"
    return None


def _choices_for(node_type: str, inp: InputDef, overrides: dict) -> Any:
    return overrides.get((node_type, inp.name))


def _check_media(node_type: str, inp: InputDef, value: Any) -> str | None:
    suffixes = MEDIA_SUFFIXES.get((node_type, inp.name))
    if suffixes is None or inp.choices is not None:
        return None
    if not isinstance(value, str) or not value.lower().endswith(suffixes):
        return f"{value!r} is not a media file name ({', '.join(suffixes)})"
    return None


def check_ui(workflow: dict, defs: dict[str, NodeDef], overrides: dict | None = None) -> list[str]:
    """Problems of a UI-format workflow against ``defs``; ``overrides[(type, input)]`` replaces a choice list."""
    overrides = overrides or {}
    p = Problems()
    if workflow.get("version") != 0.4:
        p.add("workflow", f"version is {workflow.get('version')!r}, expected 0.4")
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    if len(nodes) != len(workflow.get("nodes", [])):
        p.add("workflow", "node ids are not unique")
    links = {link[0]: link for link in workflow.get("links", [])}
    if len(links) != len(workflow.get("links", [])):
        p.add("workflow", "link ids are not unique")
    if nodes and workflow.get("last_node_id", -1) < max(nodes):
        p.add("workflow", "last_node_id is below the largest node id")
    if links and workflow.get("last_link_id", -1) < max(links):
        p.add("workflow", "last_link_id is below the largest link id")

    for nid, node in nodes.items():
        where = f"node {nid} ({node.get('type')})"
        if node.get("type") in NOTE_TYPES:
            continue
        d = defs.get(node.get("type"))
        if d is None:
            p.add(where, "unknown node type")
            continue
        # widget values, in definition order with the frontend's hidden extras
        values = list(node.get("widgets_values") or [])
        expected = sum(1 + w.extras for w in d.widgets)
        if len(values) != expected:
            p.add(where, f"{len(values)} widget values, the definition has {expected} "
                         f"({', '.join(w.name for w in d.widgets)})")
        else:
            pos = 0
            for w in d.widgets:
                why = check_value(w, values[pos], _choices_for(node["type"], w, overrides)) or \
                    _check_media(node["type"], w, values[pos])
                if why:
                    p.add(where, f"widget {w.name}: {why}")
                if w.kind == "INT" and w.extras and values[pos + 1] not in CONTROL_VALUES:
                    p.add(where, f"widget {w.name}: control value {values[pos + 1]!r} not in {CONTROL_VALUES}")
                pos += 1 + w.extras
        # input slots: sockets in order, then linked widget inputs
        slots = node.get("inputs") or []
        socket_slots = [s for s in slots if "widget" not in s]
        if [s.get("name") for s in socket_slots] != [i.name for i in d.sockets]:
            p.add(where, f"input sockets {[s.get('name') for s in socket_slots]} != "
                         f"definition {[i.name for i in d.sockets]}")
        first_widget = next((k for k, s in enumerate(slots) if "widget" in s), len(slots))
        if any("widget" not in s for s in slots[first_widget:]):
            p.add(where, "a socket comes after a widget input in inputs")
        for slot in slots:
            inp = d.input(slot.get("name"))
            if inp is None:
                p.add(where, f"input {slot.get('name')!r} is not in the definition")
                continue
            if "widget" in slot:
                if not inp.is_widget or slot["widget"].get("name") != inp.name:
                    p.add(where, f"input {inp.name!r} is marked as a widget but is not that widget")
                if slot.get("link") is None:
                    p.add(where, f"widget input {inp.name!r} is listed but not linked")
            if slot.get("type") != inp.kind:
                p.add(where, f"input {inp.name!r} has type {slot.get('type')!r}, the definition {inp.kind!r}")
            if not inp.required and not inp.is_widget and slot.get("shape") != 7:
                p.add(where, f"optional input {inp.name!r} lacks shape 7")
            if slot.get("link") is not None and slot["link"] not in links:
                p.add(where, f"input {inp.name!r} refers to missing link {slot['link']}")
        for inp in d.sockets:
            slot = next((s for s in slots if s.get("name") == inp.name), None)
            if inp.required and (slot is None or slot.get("link") is None):
                p.add(where, f"required input {inp.name!r} is not linked")
        # outputs
        outs = node.get("outputs") or []
        if [(o.get("name"), o.get("type")) for o in outs] != d.outputs:
            p.add(where, f"outputs {[(o.get('name'), o.get('type')) for o in outs]} != definition {d.outputs}")
        for k, o in enumerate(outs):
            for lid in o.get("links") or []:
                if lid not in links or links[lid][1] != nid or links[lid][2] != k:
                    p.add(where, f"output {o.get('name')!r} lists link {lid}, which does not start there")

    for lid, link in links.items():
        where = f"link {lid}"
        if len(link) != 6:
            p.add(where, "is not [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        _, a, a_slot, b, b_slot, kind = link
        if a not in nodes or b not in nodes:
            p.add(where, "joins a missing node")
            continue
        da, db = defs.get(nodes[a]["type"]), defs.get(nodes[b]["type"])
        if da is None or db is None:
            continue
        if not 0 <= a_slot < len(da.outputs):
            p.add(where, f"starts at missing output slot {a_slot} of node {a}")
            continue
        out_type = da.outputs[a_slot][1]
        slots = nodes[b].get("inputs") or []
        if not 0 <= b_slot < len(slots):
            p.add(where, f"ends at missing input slot {b_slot} of node {b}")
            continue
        slot = slots[b_slot]
        inp = db.input(slot.get("name"))
        if slot.get("link") != lid:
            p.add(where, f"node {b} input {slot.get('name')!r} does not refer back to it")
        outs = nodes[a].get("outputs") or []
        if a_slot >= len(outs) or lid not in (outs[a_slot].get("links") or []):
            p.add(where, f"node {a} output slot {a_slot} does not list it")
        if inp is None:
            continue
        if not (kind == out_type == inp.kind):
            p.add(where, f"type {kind!r} joins output {da.outputs[a_slot]} of node {a} ({nodes[a]['type']}) "
                         f"to input {inp.name!r} ({inp.kind}) of node {b} ({nodes[b]['type']})")
    return p.items


def ui_graph(workflow: dict, defs: dict[str, NodeDef]) -> dict[str, dict[str, Any]]:
    """The prompt a UI-format workflow stands for: node id -> {class_type, inputs} (API format, no _meta)."""
    nodes = {n["id"]: n for n in workflow["nodes"] if n["type"] not in NOTE_TYPES}
    links = {link[0]: link for link in workflow["links"]}
    out: dict[str, dict[str, Any]] = {}
    for nid, node in nodes.items():
        d = defs[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        pos = 0
        for w in d.widgets:
            if pos < len(values):
                inputs[w.name] = values[pos]
            pos += 1 + w.extras
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None and slot["link"] in links:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        out[str(nid)] = {"class_type": node["type"], "inputs": inputs}
    return out


def check_api(api: dict, workflow: dict | None, defs: dict[str, NodeDef], overrides: dict | None = None) -> list[str]:
    """Problems of an API-format prompt: against ``defs``, and (given the UI workflow) against its graph."""
    overrides = overrides or {}
    p = Problems()
    for nid, node in api.items():
        where = f"api node {nid} ({node.get('class_type')})"
        d = defs.get(node.get("class_type"))
        if d is None:
            p.add(where, "unknown node type")
            continue
        inputs = node.get("inputs", {})
        for name, value in inputs.items():
            inp = d.input(name)
            if inp is None:
                p.add(where, f"input {name!r} is not in the definition")
                continue
            if isinstance(value, list):
                src = api.get(str(value[0])) if len(value) == 2 else None
                sd = defs.get(src.get("class_type")) if src else None
                if sd is None or not isinstance(value[1], int) or not 0 <= value[1] < len(sd.outputs):
                    p.add(where, f"input {name!r} links to a missing node or output {value!r}")
                elif sd.outputs[value[1]][1] != inp.kind:
                    p.add(where, f"input {name!r} ({inp.kind}) is linked to a {sd.outputs[value[1]][1]} output")
            elif not inp.is_widget:
                p.add(where, f"socket input {name!r} has a value instead of a link")
            else:
                why = check_value(inp, value, _choices_for(node["class_type"], inp, overrides)) or \
                    _check_media(node["class_type"], inp, value)
                if why:
                    p.add(where, f"input {name}: {why}")
        for inp in d.inputs:
            if inp.required and inp.name not in inputs:
                p.add(where, f"required input {inp.name!r} is missing")
    if workflow is not None:
        expected = ui_graph(workflow, defs)
        got = {k: {"class_type": v.get("class_type"), "inputs": v.get("inputs")} for k, v in api.items()}
        if set(expected) != set(got):
            p.add("api", f"node ids {sorted(got)} differ from the UI workflow's {sorted(expected)}")
        for nid in sorted(set(expected) & set(got)):
            if expected[nid] != got[nid]:
                p.add(f"api node {nid}", f"{got[nid]} differs from the UI workflow's {expected[nid]}")
    return p.items


# ---------------------------------------------------------------- layout (what the graph looks like on the canvas)

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar is drawn above its pos
SLOT_HEIGHT = 20  # LiteGraph.NODE_SLOT_HEIGHT
GROUP_TITLE = 1.4  # a group's title bar: font_size * 1.4, inside its bounding
CANVAS = (1600, 900)  # the view a workflow is judged at
# what ComfyUI's frontend (1.3x, new menu) draws over the canvas, in screen pixels: left / top / right / bottom bars,
# and the minimap with the zoom controls in the bottom right corner
CHROME = (60, 100, 10, 10)
MINIMAP = (250, 260)


def node_box(node: dict) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of a node on the canvas, title bar included (collapsed nodes: the title only)."""
    x, y = node["pos"]
    w, h = node["size"]
    if node.get("flags", {}).get("collapsed"):
        h = 0
    return x, y - TITLE_HEIGHT, x + w, y + h


def group_box(group: dict) -> tuple[float, float, float, float]:
    x, y, w, h = group["bounding"]
    return x, y, x + w, y + h


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a, b) -> bool:
    """Box a lies within box b."""
    return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


WIDGET_ROW = 24  # a widget row (LiteGraph.NODE_WIDGET_HEIGHT 20 + its margin)


def _slot(node: dict, slot: int, output: bool, d: NodeDef | None = None) -> tuple[float, float]:
    """Where the frontend draws a slot's connection point: sockets in rows of 20 from the top (getConnectionPos); a
    linked widget's socket on its widget's row, below the socket rows (needs the node's definition ``d``)."""
    x, y = node["pos"]
    half = SLOT_HEIGHT * 0.5
    if output:
        return x + node["size"][0] + 1 - half, y + (slot + 0.7) * SLOT_HEIGHT
    entry = node.get("inputs", [])[slot] if slot < len(node.get("inputs", [])) else {}
    if d is not None and "widget" in entry:
        rows = max(len(d.sockets), len(d.outputs))
        row = 0
        for w in d.widgets:
            if w.name == entry["widget"]["name"]:
                break
            row += 1 + w.extras  # the seed's control and the upload button are widget rows too
        return x + half, y + rows * SLOT_HEIGHT + 14 + row * WIDGET_ROW
    return x + half, y + (slot + 0.7) * SLOT_HEIGHT


def _bezier(p: list[tuple[float, float]], n: int = 48) -> list[tuple[float, float]]:
    out = []
    for i in range(n + 1):
        t = i / n
        c = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3)
        out.append((sum(k * q[0] for k, q in zip(c, p)), sum(k * q[1] for k, q in zip(c, p))))
    return out


def wire_points(a: tuple[float, float], b: tuple[float, float], n: int = 64) -> list[tuple[float, float]]:
    """Points along a link as LiteGraph's default spline draws it: a cubic from the output going right to the input
    coming from the left, its handles a quarter of the distance long."""
    d = math.dist(a, b) * 0.25
    return _bezier([a, (a[0] + d, a[1]), (b[0] - d, b[1]), b], n)


REROUTE_SPLINE = 80  # Reroute.maxSplineOffset


def routed_points(start: tuple[float, float], end: tuple[float, float], chain: list[dict],
                  next_of: dict[int, list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Points along a link drawn through native reroutes ``chain`` (from the output's side), as the frontend
    draws it: each reroute turns the wire to the bisector of its incoming direction and the mean direction to
    where its links go next (``next_of[reroute id]``), with handles at most 80 long."""
    if not chain:
        return wire_points(start, end)
    points: list[tuple[float, float]] = []
    prev = start
    out_control = None  # the previous reroute's outgoing handle
    for k, r in enumerate(chain):
        pos = tuple(r["pos"])
        ahead = next_of.get(r["id"]) or [end]
        mean = sum(math.atan2(q[1] - pos[1], q[0] - pos[0]) for q in ahead) / len(ahead)
        come = math.atan2(pos[1] - prev[1], pos[0] - prev[0])
        half = (come - mean) * 0.5
        if abs(half) > math.pi * 0.5:
            half += math.pi
        angle = come - half
        cos, sin = math.cos(angle), math.sin(angle)
        back = min(REROUTE_SPLINE, math.dist(prev, pos) * 0.25)
        c1 = (prev[0] + math.dist(prev, pos) * 0.25, prev[1]) if out_control is None else \
            (prev[0] + out_control[0], prev[1] + out_control[1])
        points += _bezier([prev, c1, (pos[0] - back * cos, pos[1] - back * sin), pos])
        nxt = tuple(chain[k + 1]["pos"]) if k + 1 < len(chain) else end
        ahead_len = min(REROUTE_SPLINE, math.dist(pos, nxt) * 0.25)
        out_control = (ahead_len * cos, ahead_len * sin)
        prev = pos
    d = math.dist(prev, end) * 0.25
    points += _bezier([prev, (prev[0] + out_control[0], prev[1] + out_control[1]), (end[0] - d, end[1]), end])
    return points


def _wires(workflow: dict, defs: dict[str, NodeDef] | None) -> dict[int, list[tuple[float, float]]]:
    """Every link's drawn points, reroutes (``extra.reroutes`` / ``extra.linkExtensions``) included."""
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    extra = workflow.get("extra", {})
    reroutes = {r["id"]: r for r in extra.get("reroutes") or []}
    last = {e["id"]: e["parentId"] for e in extra.get("linkExtensions") or []}
    ends, chains = {}, {}
    for link in workflow.get("links", []):
        lid, a, a_slot, b, b_slot = link[:5]
        ends[lid] = (_slot(nodes[a], a_slot, True), _slot(nodes[b], b_slot, False, (defs or {}).get(nodes[b]["type"])))
        chain, rid = [], last.get(lid)
        while rid is not None and rid in reroutes:
            chain.insert(0, reroutes[rid])
            rid = reroutes[rid].get("parentId")
        chains[lid] = chain
    next_of: dict[int, list[tuple[float, float]]] = {}
    for lid, chain in chains.items():
        for k, r in enumerate(chain):
            next_of.setdefault(r["id"], []).append(tuple(chain[k + 1]["pos"]) if k + 1 < len(chain) else ends[lid][1])
    return {lid: routed_points(*ends[lid], chains[lid], next_of) for lid in chains}


def layout_problems(workflow: dict, defs: dict[str, NodeDef] | None = None, canvas: tuple[int, int] = CANVAS,
                    gap: float = 10) -> list[str]:
    """What makes a UI-format graph hard to read: nodes or groups that overlap (title bars included, ``gap`` apart),
    a node outside every group or in two, a group title under a node, a link running right to left, a wire drawn
    across a node, a node or group outside the saved view (``extra.ds`` on a ``canvas`` of that size, less the
    frontend's own bars: :data:`CHROME`). With ``defs``, links into widgets are drawn to the widget's row."""
    problems = []
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    boxes = {nid: node_box(n) for nid, n in nodes.items()}
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            pa = boxes[a]
            if _overlaps((pa[0] - gap, pa[1] - gap, pa[2] + gap, pa[3] + gap), boxes[b]):
                problems.append(f"nodes {a} and {b} overlap (or are closer than {gap:g})")
    groups = [(g.get("title", "?"), group_box(g), g.get("font_size", 24) * GROUP_TITLE)
              for g in workflow.get("groups", [])]
    for i, (ta, a, _) in enumerate(groups):
        for tb, b, _ in groups[i + 1:]:
            if _overlaps(a, b):
                problems.append(f"groups {ta!r} and {tb!r} overlap")
    for nid, box in boxes.items():
        inside = [t for t, g, title in groups if _inside(box, (g[0], g[1] + title, g[2], g[3]))]
        touching = [t for t, g, _ in groups if _overlaps(box, g)]
        if len(inside) != 1 or touching != inside:
            problems.append(f"node {nid} ({nodes[nid].get('title') or nodes[nid]['type']}) is inside {inside} and "
                            f"touches {touching}: it should sit inside exactly one group, below its title")
    wires = _wires(workflow, defs)
    for link in workflow.get("links", []):
        lid, a, _, b = link[:4]
        if boxes[a][2] >= boxes[b][0]:
            problems.append(f"link {lid} runs from node {a} to node {b}, which is not to its right")
        points = wires[lid]
        crossed = sorted({nid for nid, box in boxes.items() if nid not in (a, b)
                          for x, y in points if box[0] < x < box[2] and box[1] < y < box[3]})
        if crossed:
            problems.append(f"link {lid} ({a} -> {b}) is drawn across node(s) {crossed}")
    ds = workflow.get("extra", {}).get("ds", {"scale": 1, "offset": [0, 0]})
    scale, (ox, oy) = ds["scale"], ds["offset"]
    left, top, right, bottom = CHROME
    view = (left / scale - ox, top / scale - oy, (canvas[0] - right) / scale - ox, (canvas[1] - bottom) / scale - oy)
    minimap = ((canvas[0] - MINIMAP[0]) / scale - ox, (canvas[1] - MINIMAP[1]) / scale - oy, view[2], view[3])
    for what, box in [(f"node {nid}", box) for nid, box in boxes.items()] + [(f"group {t!r}", b) for t, b, _ in groups]:
        if not _inside(box, view) or _overlaps(box, minimap):
            problems.append(f"{what} is not (wholly) visible at the saved view")
    return problems
