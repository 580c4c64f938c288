"""Training-sample throughput of the dataset (run by hand).

    python bench/bench_dataset.py [--root PREPARED] [--samples 500] [--workers 0]

Without ``--root`` a synthetic prepared folder (4 clips of 250 frames, the real on-disk format) is written
to a temporary folder. Prints samples per second for a plain loop and for a DataLoader with ``--workers``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    from train.dataset import build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            from test_train_dataset import make_prepared

            root = make_prepared(Path(tmp), {f"v{i}": [250] for i in range(4)})
        ds = build_dataset({"root": str(root)})
        torch.set_num_threads(1)
        n = min(args.samples, len(ds))
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(ds), generator=g)[:n].tolist()
        ds[order[0]]
        t = time.perf_counter()
        for i in order:
            ds[i]
        loop = n / (time.perf_counter() - t)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, order), batch_size=args.batch,
                                             num_workers=args.workers)
        t = time.perf_counter()
        for _ in loader:
            pass
        dl = n / (time.perf_counter() - t)
    print(f"{'samples':>8} {'loop/s':>9} {'loader/s':>9} workers")
    print(f"{n:>8} {loop:>9.1f} {dl:>9.1f} {args.workers}")


if __name__ == "__main__":
    main()
