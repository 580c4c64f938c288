"""Real-ComfyUI check of the pack and its shipped workflows, over ComfyUI's HTTP API (loopback only).

Checks that ComfyUI lists every JoyGen node and the ``joygen`` model folder, checks every shipped
workflow (UI and API format) against the live ``/object_info``, then queues each API workflow and
waits for a saved video. Prints a table. See workflows/README.md for the set-up (a ComfyUI checkout
with the pack in custom_nodes/ and models in models/joygen/).

    python3 bench/comfy_smoke.py --comfy /work/comfyui --python /work/comfyui-venv/bin/python --start --media
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from workflow_check import check_api, check_ui, defs_from_object_info  # noqa: E402

WORKFLOWS = ("joygen_composable", "joygen_all_in_one", "joygen_audio_only", "joygen_video_driven")


def _get(url: str, timeout: float = 30) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, body: dict, timeout: float = 30) -> tuple[int, object]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def make_media(input_dir: Path, frames: int = 16) -> None:
    """A 16-frame MP4 of the real talking face (25 fps, with its own speech) and ~1.3 s of driving speech."""
    sys.path.insert(0, str(ROOT))
    from conftest import synth_speech, webp_frames
    from joygen_core.video.io import read_audio, write_video

    input_dir.mkdir(parents=True, exist_ok=True)
    for name in ("talking_face.mp4", "speech.wav", "driver.mp4"):
        (input_dir / name).unlink(missing_ok=True)
    synth_speech(input_dir / "speech.wav", "Hello, a test.")
    own = synth_speech(input_dir / "_own_speech.wav", "Good morning.")
    write_video(input_dir / "talking_face.mp4", iter([webp_frames(max_frames=frames)]), fps=25.0,
                audio=read_audio(own))
    # the video-driven graph's driver: the face at 30 fps (so the motion is re-timed) with the driving speech
    write_video(input_dir / "driver.mp4", iter([webp_frames(max_frames=max(frames, 40))]), fps=30.0,
                audio=read_audio(input_dir / "speech.wav"))
    own.unlink()


def wait_for(url: str, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            _get(url + "/system_stats", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(1)
    raise SystemExit(f"ComfyUI did not answer at {url} within {seconds:.0f} s")


def run_prompt(url: str, prompt: dict, timeout: float) -> tuple[str, float, dict]:
    t0 = time.time()
    code, reply = _post(url + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    if code != 200 or "prompt_id" not in reply:
        return f"refused ({code}): {json.dumps(reply)[:600]}", 0.0, {}
    pid = reply["prompt_id"]
    while time.time() - t0 < timeout:
        hist = _get(f"{url}/history/{pid}")
        if pid in hist:
            entry = hist[pid]
            status = entry.get("status", {})
            elapsed = time.time() - t0
            if status.get("status_str") == "success":
                return "success", elapsed, entry.get("outputs", {})
            msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
            detail = msgs[0][1] if msgs else status
            if isinstance(detail, dict):
                detail = {k: detail.get(k) for k in ("node_type", "exception_type", "exception_message")}
            return f"error: {json.dumps(detail)[:800]}", elapsed, {}
        time.sleep(1)
    return "timeout", time.time() - t0, {}


def saved_files(outputs: dict, output_dir: Path) -> list[Path]:
    files = []
    for out in outputs.values():
        for key in ("images", "videos", "gifs", "video"):
            for item in out.get(key, []) or []:
                if isinstance(item, dict) and item.get("type") == "output":
                    files.append(output_dir / item.get("subfolder", "") / item["filename"])
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8189")
    ap.add_argument("--comfy", type=Path, required=True, help="the ComfyUI folder (for input/ and output/)")
    ap.add_argument("--python", default=sys.executable, help="the Python that runs ComfyUI (with --start)")
    ap.add_argument("--start", action="store_true", help="start ComfyUI on CPU here and stop it afterwards")
    ap.add_argument("--media", action="store_true",
                    help="write talking_face.mp4, speech.wav and driver.mp4 into input/")
    ap.add_argument("--only", nargs="*", default=list(WORKFLOWS))
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    host = urllib.parse.urlparse(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("only loopback addresses are allowed")
    if args.media:
        make_media(args.comfy / "input")
    server = None
    if args.start:
        port = str(urllib.parse.urlparse(args.url).port or 8188)
        log = open(args.comfy / "joygen_smoke_server.log", "w")
        server = subprocess.Popen([args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", port],
                                  cwd=args.comfy, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    failed = False
    try:
        wait_for(args.url, 300)
        info = _get(args.url + "/object_info", timeout=120)
        joygen = sorted(k for k in info if k.startswith("JoyGen"))
        sys.path.insert(0, str(ROOT))
        from conftest import _import_pack

        expected = sorted(_import_pack().NODE_CLASS_MAPPINGS)
        missing = sorted(set(expected) - set(joygen))
        folders = _get(args.url + "/models")
        print(f"object_info: {len(info)} nodes, {len(joygen)} JoyGen nodes (pack defines {len(expected)}); "
              f"missing: {missing or 'none'}")
        print(f"model folders include joygen: {'joygen' in folders}; "
              f"files: {len(_get(args.url + '/models/joygen')) if 'joygen' in folders else 0}")
        failed |= bool(missing) or "joygen" not in folders
        defs = defs_from_object_info(info)
        for name in args.only:
            ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
            api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
            problems = check_ui(ui, defs) + check_api(api, ui, defs)
            for p in problems:
                print(f"  {name}: {p}")
            status, seconds, outputs = run_prompt(args.url, api, args.timeout)
            files = [f for f in saved_files(outputs, args.comfy / "output") if f.suffix in (".mp4", ".webm", ".mov")]
            ok = status == "success" and bool(files) and all(f.is_file() and f.stat().st_size > 0 for f in files)
            failed |= bool(problems) or not ok
            rows.append((name, "ok" if not problems else f"{len(problems)} problems", status, f"{seconds:.1f}",
                         ", ".join(str(f.relative_to(args.comfy)) for f in files) or "-"))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    widths = [max(len(r[i]) for r in rows + [("workflow", "definition check", "run", "seconds", "saved")])
              for i in range(5)]
    for r in [("workflow", "definition check", "run", "seconds", "saved")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
