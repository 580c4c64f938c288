"""What a ComfyUI user sees while the all-in-one runs, measured over ComfyUI's websocket (loopback only).

Starts its own ComfyUI (``--cpu``, a base directory of its own, so its input / temp / user folders are ours to look
at), writes a talking-face clip of ``--frames`` frames and two sentences of speech as long as it, and queues the
shipped ``workflows/api/joygen_all_in_one.json`` four times:

1. cold: every progress message, the stage named under the node (progress text), the preview images (binary
   messages), the images shown in the node at the end; then what is left in temp/ and the saved video's frames and
   audio channels;
2. new speech for the same video, interrupted (POST /interrupt) during the edit: seconds until ComfyUI reports the
   interruption, against the time of one batch; nothing saved, nothing left in temp/;
3. another video, interrupted during its per-video pass: no cache entry (complete or partial) left for it;
4. after a server restart, the first video with new speech: the per-video work comes from the cache (no faces /
   3D-faces stages, the node's log line, the time).

    /work/comfyui-venv/bin/python bench/comfy_live.py --comfy /work/comfyui --base /tmp/comfy_live --port 8190

Needs the pack in ``BASE/custom_nodes`` (made as a link to this checkout when missing), the (small) models in
``BASE/models/joygen`` (a link to ``--models``), espeak-ng, and aiohttp (ComfyUI's own dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREVIEW_EVENTS = {1: "preview", 2: "preview", 4: "preview with metadata"}  # server.BinaryEventTypes
TEXT_EVENT = 3


# ---------------------------------------------------------------- the server


def start_server(args) -> subprocess.Popen:
    log = open(args.base / "server.log", "a")  # noqa: SIM115  (kept open for the process's life)
    proc = subprocess.Popen([args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(args.port),
                             "--base-directory", str(args.base), "--disable-auto-launch"],
                            cwd=args.comfy, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.time()
    while time.time() - t0 < 240:
        if proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited with {proc.returncode}; see {args.base / 'server.log'}")
        try:
            urllib.request.urlopen(f"{args.url}/system_stats", timeout=2).read()
            return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise SystemExit("ComfyUI did not start within 240 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- media


def speech(path: Path, text: str, seconds: float) -> None:
    """espeak-ng speech, cut or padded with silence to exactly ``seconds`` (mono, as recorded speech usually is)."""
    from joygen_core.video.io import AudioClip, read_audio

    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    clip = read_audio(raw)
    raw.unlink()
    n = int(round(seconds * clip.sample_rate))
    wav = clip.waveform[:, :n]
    if wav.shape[1] < n:
        import torch

        wav = torch.cat([wav, wav.new_zeros(wav.shape[0], n - wav.shape[1])], 1)
    _write_wav(path, AudioClip(wav, clip.sample_rate))


def _write_wav(path: Path, clip) -> None:
    import wave

    pcm = (np.clip(clip.waveform.numpy().T, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(clip.sample_rate))
        w.writeframes(pcm.tobytes())


def make_media(folder: Path, frames: int) -> dict[str, str]:
    from PIL import Image, ImageSequence

    from joygen_core.demo import template_clip
    from joygen_core.video.io import write_video

    folder.mkdir(parents=True, exist_ok=True)
    img = Image.open(template_clip())
    clip = np.stack([np.asarray(f.convert("RGB")) for _, f in zip(range(frames), ImageSequence.Iterator(img))])
    if len(clip) < frames:  # ping-pong the clip to the length asked for
        clip = np.concatenate([clip, clip[::-1]] * math.ceil(frames / len(clip)))[:frames]
    names = {"face": "joygen_live_face.mp4", "face2": "joygen_live_face_mirrored.mp4",
             "speech": "joygen_live_speech.wav", "speech2": "joygen_live_speech2.wav"}
    for key in ("face", "face2"):
        (folder / names[key]).unlink(missing_ok=True)
    write_video(folder / names["face"], iter([clip]), fps=25.0)
    write_video(folder / names["face2"], iter([np.ascontiguousarray(clip[:, :, ::-1])]), fps=25.0)
    speech(folder / names["speech"], "Hello there, this is a test of the lip sync, one two three four.", frames / 25)
    speech(folder / names["speech2"], "And a second sentence, with other words for the same face.", frames / 25)
    return names


def prompt_for(video: str, audio: str, batch: int, prefix: str, name: str = "joygen_all_in_one") -> dict:
    graph = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "LoadVideo":
            inputs["file"] = video
        elif kind == "LoadAudio":
            inputs["audio"] = audio
        elif kind in ("JoyGenLipSync", "JoyGenEdit"):
            inputs["batch_size"] = batch
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = prefix
    return graph


# ---------------------------------------------------------------- one run over the websocket


@dataclass
class Run:
    name: str
    t_queued: float = 0.0
    t_node: float | None = None  # JoyGen Lip Sync started
    t_end: float | None = None
    outcome: str = "?"
    progress: list[tuple[float, float, float, str]] = field(default_factory=list)  # t, value, max, stage
    texts: list[tuple[float, str]] = field(default_factory=list)
    previews: list[tuple[float, int]] = field(default_factory=list)  # t, bytes
    ui_images: int = 0
    t_interrupt: float | None = None
    error: str = ""
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)  # node id -> progress / previews / shown

    def stage_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for *_, stage in self.progress:
            counts[stage] = counts.get(stage, 0) + 1
        return counts

    def longest_gap(self) -> float:
        times = [self.t_node] + [t for t, *_ in self.progress] if self.t_node is not None else []
        return max((b - a for a, b in zip(times, times[1:])), default=float("nan"))

    def stage_seconds(self, stage: str) -> float:
        times = [t for t, *_, s in self.progress if s == stage]
        return times[-1] - times[0] if len(times) > 1 else float("nan")


async def run_prompt(url: str, prompt: dict, name: str, lipsync_id: str,
                     interrupt_at: tuple[str, int] | None = None) -> Run:
    """Queue ``prompt`` and follow it to its end; ``interrupt_at`` (stage, n): POST /interrupt at the n-th progress
    message of that stage."""
    cid = uuid.uuid4().hex
    run = Run(name)
    stage = ""
    running = ""
    ws_url = url.replace("http://", "ws://") + f"/ws?clientId={cid}"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        async with http.post(f"{url}/prompt", json={"prompt": prompt, "client_id": cid}) as r:
            body = await r.json()
            if r.status != 200:
                run.outcome, run.error = "refused", json.dumps(body)[:400]
                return run
        pid = body["prompt_id"]
        run.t_queued = time.monotonic()
        async for msg in ws:
            now = time.monotonic()
            if msg.type == aiohttp.WSMsgType.BINARY:
                kind = int.from_bytes(msg.data[:4], "big")
                if kind in PREVIEW_EVENTS:
                    run.previews.append((now, len(msg.data) - 8))
                    run.per_node.setdefault(running, {}).setdefault("previews", 0)
                    run.per_node[running]["previews"] += 1
                elif kind == TEXT_EVENT:
                    n = int.from_bytes(msg.data[4:8], "big")
                    text = msg.data[8 + n:].decode("utf-8", "replace")
                    run.texts.append((now, text))
                    stage = text.split(":")[0]
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            kind, d = data.get("type"), data.get("data", {})
            if d.get("prompt_id") not in (None, pid):
                continue
            if kind == "executing":
                running = str(d.get("node"))
                if d.get("node") == lipsync_id:
                    run.t_node = now
                elif run.t_node is not None and run.t_end is None and d.get("node") != lipsync_id:
                    run.t_end = now
                if d.get("node") is None:
                    run.outcome = run.outcome if run.outcome != "?" else "finished"
                    break
            elif kind == "progress":
                entry = run.per_node.setdefault(str(d.get("node")), {})
                entry["progress"] = entry.get("progress", 0) + 1
            if kind == "executed":
                entry = run.per_node.setdefault(str(d.get("node")), {})
                entry["shown"] = len((d.get("output") or {}).get("images", []))
            if kind == "progress" and str(d.get("node")) == lipsync_id:
                run.progress.append((now, d["value"], d["max"], stage))
                if (interrupt_at and run.t_interrupt is None and stage == interrupt_at[0]
                        and sum(1 for *_, s in run.progress if s == stage) >= interrupt_at[1]):
                    run.t_interrupt = time.monotonic()
                    async with http.post(f"{url}/interrupt", json={}) as r:
                        await r.read()
            elif kind == "executed" and str(d.get("node")) == lipsync_id:
                run.ui_images = len((d.get("output") or {}).get("images", []))
            elif kind == "execution_interrupted":
                run.outcome, run.t_end = "interrupted", run.t_end or now
                break
            elif kind == "execution_error":
                run.outcome, run.error = "error", f"{d.get('exception_type')}: {d.get('exception_message')}"[:400]
                break
            elif kind == "execution_success":
                run.outcome = "finished"
                break
    run.t_end = run.t_end or time.monotonic()
    return run


# ---------------------------------------------------------------- the checks


def ours_in_temp(temp: Path) -> tuple[list[str], int]:
    """(files of ours in temp/ other than the nodes' UI images, the number of UI images)."""
    files = [p for p in temp.rglob("*") if p.is_file()] if temp.exists() else []
    shown = [p for p in files if p.name.startswith("JoyGen_") and p.suffix == ".png"]
    left = [str(p.relative_to(temp)) for p in files if p not in shown and "joygen" in str(p).lower()]
    left += [str(p.relative_to(temp)) for p in temp.rglob("*") if p.is_dir() and "joygen" in p.name.lower()]
    return left, len(shown)


def cache_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def saved_video(out: Path) -> str:
    from joygen_core.video.io import probe_video, read_audio

    files = sorted(out.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
    if not files:
        return "none"
    info = probe_video(files[-1])
    return f"{files[-1].name}: {info.frame_count} frames, audio {read_audio(files[-1]).channels} ch"


def describe(run: Run, batch_s: float | None = None) -> list[tuple[str, str]]:
    rows = [(f"{run.name}: outcome", run.outcome + (f" ({run.error})" if run.error else ""))]
    if run.t_node is None:
        return rows
    node_s = (run.t_end or run.t_node) - run.t_node
    per_stage = ", ".join(f"{k or '?'} {v}" for k, v in run.stage_counts().items())
    rows += [(f"{run.name}: Lip Sync node time", f"{node_s:.1f} s"),
             (f"{run.name}: progress messages (per stage)", f"{len(run.progress)} ({per_stage})"),
             (f"{run.name}: longest gap between progress messages", f"{run.longest_gap():.1f} s"),
             (f"{run.name}: preview images (binary messages)", f"{len(run.previews)}, "
              f"{sum(b for _, b in run.previews) // max(len(run.previews), 1)} bytes each on average"),
             (f"{run.name}: stages named under the node", ", ".join(dict.fromkeys(t.split(':')[0]
                                                                                   for _, t in run.texts)))]
    if run.ui_images:
        rows.append((f"{run.name}: images shown in the node at the end", str(run.ui_images)))
    if run.t_interrupt is not None:
        rows.append((f"{run.name}: interrupt -> execution_interrupted", f"{run.t_end - run.t_interrupt:.2f} s"
                     + (f" (one batch: {batch_s:.2f} s)" if batch_s else "")))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy", type=Path, default=Path("/work/comfyui"), help="the ComfyUI checkout")
    ap.add_argument("--python", default=sys.executable, help="ComfyUI's Python")
    ap.add_argument("--base", type=Path, default=Path("/tmp/comfy_live"), help="ComfyUI --base-directory (ours)")
    ap.add_argument("--models", type=Path, default=Path("/work/comfyui/models/joygen"))
    ap.add_argument("--port", type=int, default=8190)
    ap.add_argument("--frames", type=int, default=54)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    args.url = f"http://127.0.0.1:{args.port}"
    args.base = args.base.resolve()
    for sub in ("custom_nodes", "models"):
        (args.base / sub).mkdir(parents=True, exist_ok=True)
    if not (args.base / "custom_nodes" / "joygen").exists():
        (args.base / "custom_nodes" / "joygen").symlink_to(ROOT)
    if not (args.base / "models" / "joygen").exists():
        (args.base / "models" / "joygen").symlink_to(args.models)
    cache = args.base / "user" / "joygen_cache"
    shutil.rmtree(cache, ignore_errors=True)  # a cold first run
    shutil.rmtree(args.base / "output" / "joygen_live", ignore_errors=True)
    names = make_media(args.base / "input", args.frames)
    graph = json.loads((ROOT / "workflows" / "api" / "joygen_all_in_one.json").read_text())
    lipsync_id = next(k for k, v in graph.items() if v["class_type"] == "JoyGenLipSync")
    temp, out = args.base / "temp", args.base / "output" / "joygen_live"
    rows: list[tuple[str, str]] = []

    def go(name, video, audio, interrupt_at=None):
        return asyncio.run(run_prompt(args.url, prompt_for(names[video], names[audio], args.batch,
                                                            f"joygen_live/{name.split()[0]}"),
                                      name, lipsync_id, interrupt_at))

    proc = start_server(args)
    try:
        cold = go("1 cold", "face", "speech")
        rows += describe(cold)
        left, shown = ours_in_temp(temp)
        rows += [("1 cold: temp/ after the run", f"nothing of ours besides {shown} UI images" if not left
                  else f"LEFT: {left}"),
                 ("1 cold: saved video", saved_video(out)),
                 ("1 cold: cache entries", str(len(cache_entries(cache))))]
        composable = prompt_for(names["face"], names["speech"], args.batch, "joygen_live/composable",
                                "joygen_composable")
        comp = asyncio.run(run_prompt(args.url, composable, "composable", "-", None))
        rows.append(("composable graph: outcome", comp.outcome + (f" ({comp.error})" if comp.error else "")))
        for nid, stats in sorted(comp.per_node.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
            if nid in composable and stats:
                rows.append((f"composable: {composable[nid]['_meta']['title']}",
                             ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))))
        edit_batches = [b - a for a, b in zip([t for t, *_, s in cold.progress if s == "editing"][:-1],
                                              [t for t, *_, s in cold.progress if s == "editing"][1:])]
        batch_s = float(np.median(edit_batches)) if edit_batches else None
        saved_before = len(list(out.glob("*.mp4")))
        stop_edit = go("2 interrupt in edit", "face", "speech2", ("editing", 2))
        rows += describe(stop_edit, batch_s)
        left, shown = ours_in_temp(temp)
        rows += [("2 interrupt in edit: videos saved by it", str(len(list(out.glob("*.mp4"))) - saved_before)),
                 ("2 interrupt in edit: temp/ after", "nothing of ours" if not left else f"LEFT: {left}")]
        entries = cache_entries(cache)
        video_batches = [b - a for a, b in zip([t for t, *_, s in cold.progress if s == "3D faces and latents"][:-1],
                                               [t for t, *_, s in cold.progress if s == "3D faces and latents"][1:])]
        stop_video = go("3 interrupt in per-video pass", "face2", "speech", ("3D faces and latents", 2))
        rows += describe(stop_video, float(np.median(video_batches)) if video_batches else None)
        after = cache_entries(cache)
        left, _ = ours_in_temp(temp)
        rows += [("3 interrupt in per-video pass: cache entries before / after", f"{len(entries)} / {len(after)}"
                  + ("" if after == entries else f" (new: {sorted(set(after) - set(entries))})")),
                 ("3 interrupt in per-video pass: temp/ after", "nothing of ours" if not left else f"LEFT: {left}")]
    finally:
        stop_server(proc)
    proc = start_server(args)  # a restart: ComfyUI empties temp/; our cache is in user/
    try:
        warm = go("4 after restart, new speech", "face", "speech2")
        rows += describe(warm)
        log = (args.base / "server.log").read_text(errors="replace")
        hits = log.count("per-video work from the cache")
        left, shown = ours_in_temp(temp)
        rows += [("4 after restart: node log says per-video work from the cache", "yes" if hits else "no"),
                 ("4 after restart: Lip Sync node time, cold run -> this run",
                  f"{cold.t_end - cold.t_node:.1f} s -> {warm.t_end - warm.t_node:.1f} s"
                  if cold.t_node and warm.t_node else "?"),
                 ("4 after restart: temp/ after", f"nothing of ours besides {shown} UI images" if not left
                  else f"LEFT: {left}"),
                 ("4 after restart: saved video", saved_video(out))]
    finally:
        stop_server(proc)
    width = max(len(k) for k, _ in rows)
    print(f"ComfyUI live check: all-in-one, {args.frames} frames, batch {args.batch}, CPU")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
