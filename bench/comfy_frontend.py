"""Opens each shipped UI workflow in ComfyUI's real graph editor (headless Chromium) and compares the prompt it makes.

For every ``workflows/*.json``: ``app.loadGraphData`` in the browser, then ``app.graphToPrompt()``;
the prompt the editor builds must equal the API copy in ``workflows/api/`` (same nodes, links and
values), and the page must log no errors while loading. The graph as the editor laid it out (node sizes
as the frontend computes them) must pass tests/workflow_check.py's layout check (no overlaps, one group
per node, no wire across a node, all visible at the saved view of a 1600x900 canvas). ``--screenshot DIR``
saves what the page shows at the saved view, one PNG per graph, to look at. Needs a running ComfyUI with
the pack (loopback), Chromium, and aiohttp (ComfyUI's own dependency):

    /work/comfyui-venv/bin/python bench/comfy_frontend.py --url http://127.0.0.1:8190 --screenshot /tmp/shots
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from workflow_check import CANVAS, defs_from_object_info, layout_problems  # noqa: E402

NAMES = ("joygen_composable", "joygen_all_in_one", "joygen_audio_only", "joygen_video_driven")
# Inputs the editor adds to a prompt for its own preview widgets; the server ignores them.
FRONTEND_ONLY = {("LoadAudio", "audioUI")}


class Page:
    """The smallest Chrome DevTools Protocol client: evaluate JavaScript, collect console errors."""

    def __init__(self, ws):
        self.ws, self.next_id, self.pending, self.errors = ws, 0, {}, []

    async def pump(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] in ("error", "assert"):
                self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in
                                            data["params"]["args"]))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.errors.append(data["params"]["exceptionDetails"].get("exception", {}).get("description", "?"))

    async def call(self, method: str, **params):
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        return await asyncio.wait_for(fut, 120)

    async def eval(self, expression: str):
        reply = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        result = reply.get("result", {})
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("exception", {}).get("description", result))
        return result.get("result", {}).get("value")


def _strip(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"],
                "inputs": {n: x for n, x in v["inputs"].items() if (v["class_type"], n) not in FRONTEND_ONLY}}
            for k, v in prompt.items()}


async def check(url: str, browser: str, folder: Path, shots: Path | None = None) -> int:
    profile = tempfile.mkdtemp(prefix="joygen_chromium_")
    port = 9333
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                             "--window-size=1600,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failed = False
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(60):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        targets = [t for t in await r.json() if t.get("type") == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(1)
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                pump = asyncio.create_task(page.pump())
                await page.call("Runtime.enable")
                await page.call("Page.enable")
                await page.call("Emulation.setDeviceMetricsOverride", width=CANVAS[0], height=CANVAS[1],
                                deviceScaleFactor=1, mobile=False)
                # a first visit opens the templates dialog over the canvas; a user who has seen it does not get it
                async with http.post(f"{url}/api/settings/Comfy.TutorialCompleted", json=True):
                    pass
                await page.call("Page.navigate", url=url)
                t0 = time.time()
                while not await page.eval("!!(window.app && window.app.graph && window.app.canvas)"):
                    if time.time() - t0 > 120:
                        raise SystemExit("the ComfyUI page did not start (no window.app)")
                    await asyncio.sleep(1)
                await asyncio.sleep(3)
                page.errors.clear()
                version = await page.eval("window.__COMFYUI_FRONTEND_VERSION__ || ''")
                async with http.get(f"{url}/object_info") as r:
                    defs = defs_from_object_info(await r.json())
                print(f"frontend {version or '?'} loaded from {url}")
                for name in NAMES:
                    ui = json.loads((folder / f"{name}.json").read_text())
                    api = json.loads((folder / "api" / f"{name}.json").read_text())
                    page.errors.clear()
                    got = await page.eval(
                        f"(async () => {{ await app.loadGraphData({json.dumps(ui)}, true, true, {json.dumps(name)});"
                        " const p = await app.graphToPrompt();"
                        " const g = app.graph.serialize();"
                        " return {prompt: p.output, nodes: g.nodes.length, links: (g.links || []).length,"
                        "  missing: app.graph.nodes.filter(n => n.has_errors || n.type === undefined).map(n => n.id),"
                        "  widgets: Object.fromEntries(g.nodes.map(n => [n.id, n.widgets_values])),"
                        "  graph: {nodes: g.nodes.map(n => ({id: n.id, type: n.type, title: n.title, pos: n.pos,"
                        "   size: n.size, flags: n.flags})), links: g.links, groups: g.groups,"
                        "   wires: (g.links || []).map(l => [l[0], app.graph.getNodeById(l[1]).getOutputPos(l[2]),"
                        "    app.graph.getNodeById(l[3]).getInputPos(l[4])]),"
                        "   extra: {reroutes: g.extra.reroutes, linkExtensions: g.extra.linkExtensions,"
                        "    ds: {scale: app.canvas.ds.scale, offset: Array.from(app.canvas.ds.offset)}}}}; })()")
                    await asyncio.sleep(3)
                    # the sizes once media previews have loaded (Load Video grows to its video's aspect ratio)
                    got["graph"]["nodes"] = await page.eval(
                        "app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title, pos: Array.from(n.pos),"
                        " size: Array.from(n.size), flags: n.flags}))")
                    if shots is not None:
                        shots.mkdir(parents=True, exist_ok=True)
                        shot = await page.call("Page.captureScreenshot", format="png")
                        (shots / f"{name}.png").write_bytes(base64.b64decode(shot["result"]["data"]))
                        (shots / f"{name}.layout.json").write_text(json.dumps(got["graph"], indent=1))
                    same = _strip(got["prompt"]) == _strip(api)
                    widgets = {str(n["id"]): n.get("widgets_values") for n in ui["nodes"]}
                    widgets_same = {k: v for k, v in got["widgets"].items() if widgets.get(k) != v}
                    problems = []
                    if not same:
                        for nid in sorted(set(_strip(got["prompt"])) | set(_strip(api))):
                            a, b = _strip(got["prompt"]).get(nid), _strip(api).get(nid)
                            if a != b:
                                problems.append(f"node {nid}: editor {a} != api {b}")
                    if widgets_same:
                        problems.append(f"widgets re-serialized differently: {widgets_same}")
                    if got["missing"]:
                        problems.append(f"nodes with errors: {got['missing']}")
                    problems += [f"console: {e}" for e in page.errors]
                    problems += [f"layout in the editor: {p}" for p in layout_problems(got["graph"], defs)]
                    failed |= bool(problems)
                    print(f"{name}: {got['nodes']} nodes, {got['links']} links; editor prompt == api copy: {same}; "
                          f"{len(problems)} problems")
                    for p in problems:
                        print("   ", p[:800])
                pump.cancel()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8189")
    ap.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    ap.add_argument("--folder", type=Path, default=ROOT / "workflows", help="the workflows folder to open")
    ap.add_argument("--screenshot", type=Path, default=None, metavar="DIR",
                    help="save a PNG of each graph at its saved view into DIR")
    args = ap.parse_args()
    if urllib.parse.urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("only loopback addresses are allowed")
    return asyncio.run(check(args.url, args.browser, args.folder, args.screenshot))


if __name__ == "__main__":
    raise SystemExit(main())
