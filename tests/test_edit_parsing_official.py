"""Our BiSeNet against the official face-parsing.PyTorch model code, when a checkout of it is at hand.

Set JOYGEN_OFFICIAL_FACE_PARSING to a checkout of github.com/zllrunning/face-parsing.PyTorch (its
``model.py`` and ``resnet.py`` are imported, not copied); skipped otherwise. The official network gets
the factory's ``79999_iter.pth`` through its own strict ``load_state_dict``; both see the same real
frame, preprocessed as the official ``test.py`` does.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from joygen_core.edit.parsing import load_face_parser, parse_labels

OFFICIAL = Path(os.environ.get("JOYGEN_OFFICIAL_FACE_PARSING", "/nonexistent"))
pytestmark = pytest.mark.skipif(not (OFFICIAL / "model.py").is_file() or not (OFFICIAL / "resnet.py").is_file(),
                                reason="set JOYGEN_OFFICIAL_FACE_PARSING to a face-parsing.PyTorch checkout")


@pytest.fixture(scope="module")
def official_net(tmp_path_factory):
    from factory import make_models_folder

    path = make_models_folder(tmp_path_factory.mktemp("parsing"), only=["parsing"]) / "face-parse-bisent/79999_iter.pth"
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(OFFICIAL))
    mods = {}
    for name in ("resnet", "model"):  # model.py does `from resnet import Resnet18`
        spec = importlib.util.spec_from_file_location(name, OFFICIAL / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, name, mods[name])
        spec.loader.exec_module(mods[name])
    # the official Resnet18 downloads ImageNet weights while it is built; the file below replaces them anyway
    mp.setattr(mods["resnet"].Resnet18, "init_weight", lambda self: None)
    net = mods["model"].BiSeNet(n_classes=19)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict, as the official
    net.eval()
    yield net, path
    mp.undo()


def test_same_outputs_as_official(official_net, face_frames):
    net, path = official_net
    ours = load_face_parser(path)
    frame = face_frames[0]
    img = Image.fromarray(frame).resize((512, 512), Image.BILINEAR)  # official test.py / JoyGen FaceParsing
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        ref = net(x[None])
        got = ours(x[None].contiguous(memory_format=torch.channels_last), aux=True)
    for r, g in zip(ref, got):
        scale = float(r.abs().max())
        assert float((r - g).abs().max()) <= 1e-4 * scale
    ref_labels = ref[0].argmax(1)[0]
    labels = parse_labels(ours, torch.from_numpy(frame.copy())[None])[0]
    assert (labels == ref_labels).float().mean() > 0.999
