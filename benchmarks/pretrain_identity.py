"""A face-identity pretraining stand-in for MS-Celeb-1M: a ResNet-18 trunk trained to tell synthetic people apart.

The seed paper (and SCN) start from a ResNet-18 pretrained on MS-Celeb-1M face recognition; no such file can be
downloaded here. This script draws many identities from the project's face generator (hundreds, none of them an
identity of the expression experiments: their traits come from another seed, checked below), expressions
drawn independently of identity (so most, not all, identities show all seven), and trains the trunk plus a linear identity classifier on them. It writes the
weights in the layout of the circulating `resnet18_msceleb.pth` (`{'state_dict': torchvision names, fc
included}`), so `--pretrained PATH` (or `model.pretrained = "PATH"` in a recipe) loads it exactly like the real
MS-Celeb file. It is a stand-in: a trunk that has learnt faces, not the real MS-Celeb-1M network.

    python benchmarks/pretrain_identity.py --out runs/pretrain/identity_resnet18.pth
Writes the weights file and a JSON sidecar (identities, images, epochs, identity accuracy on held-out images,
the closest experiment identity in trait space). About 20 minutes on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fuse_export.contract import Preprocessing
from fuse_export.data.base import Split
from fuse_export.data.synthetic import SyntheticSpec, generate_faces, identity_traits
from fuse_export.data.torchdata import SplitDataset, eval_batches
from fuse_export.data.transforms import eval_transform, train_transform
from fuse_export.fileio import atomic_open, write_json
from fuse_export.model.backbone import FEATURE_DIM, ResNet18Trunk
from fuse_export.progress import progress_bar

# The generator seed of the pretraining identities; the expression experiments draw theirs from seeds 0-99.
PRETRAIN_SEED = 7919


def nearest_trait_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Smallest distance between an identity of `a` and one of `b`, traits scaled by their spread (0 = same person)."""
    keys = sorted(a)
    xa = np.stack([a[k] for k in keys], 1)
    xb = np.stack([b[k] for k in keys], 1)
    scale = np.concatenate([xa, xb]).std(0) + 1e-12
    d = np.abs((xa[:, None, :] - xb[None, :, :]) / scale).max(-1)  # Chebyshev: equal only if every trait is equal
    return float(d.min())


class IdentityNet(nn.Module):
    """The trunk with a linear identity classifier: torchvision's ResNet-18 names (`conv1` ... `layer4`, `fc`)."""

    def __init__(self, identities: int) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk()
        self.fc = nn.Linear(FEATURE_DIM, identities)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))

    def msceleb_state_dict(self) -> dict[str, torch.Tensor]:
        """The resnet18_msceleb.pth layout: plain torchvision keys, the face-recognition `fc` included."""
        state = {k: v.detach().clone() for k, v in self.trunk.state_dict().items()}
        state.update({f"fc.{k}": v.detach().clone() for k, v in self.fc.state_dict().items()})
        return state


@torch.no_grad()
def accuracy(net: nn.Module, split: Split, pre: Preprocessing) -> float:
    net.eval()
    right = 0
    for x, idx in eval_batches(split, eval_transform(pre), 256):
        right += int((net(x).argmax(1).numpy() == split.labels[idx.numpy()]).sum())
    return right / max(len(split), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/pretrain/identity_resnet18.pth"))
    ap.add_argument("--identities", type=int, default=400)
    ap.add_argument("--images", type=int, default=16000, help="face images in all (expressions drawn independently of identity)")
    ap.add_argument("--image-size", type=int, default=32, help="the trunk's input size (the experiments' size)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=PRETRAIN_SEED, help="generator seed of the identities")
    ap.add_argument("--experiment-seeds", default="0,1,2", help="data seeds of the expression experiments, checked "
                                                                "to share no identity with the pretraining set")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()

    spec = SyntheticSpec(samples_per_class=max(1, args.images // 7), identities=args.identities, seed=args.seed)
    images, _, identity = generate_faces(spec)
    # Disjoint people: the experiments' 12 identities per data seed (SyntheticSpec's default) vs these.
    ours = identity_traits(spec)
    closest = min(nearest_trait_distance(ours, identity_traits(SyntheticSpec(seed=int(s))))
                  for s in args.experiment_seeds.split(","))
    if closest <= 0.0:
        sys.exit(f"pretraining identities coincide with an experiment identity (seed {args.seed}); pick another --seed")

    # 10% of each identity's images held out to report identity accuracy (the file is used whatever it is).
    rng = np.random.default_rng(args.seed)
    held = np.zeros(identity.size, bool)
    for k in range(args.identities):
        idx = np.flatnonzero(identity == k)
        held[rng.permutation(idx)[: max(1, idx.size // 10)] if idx.size > 1 else []] = True
    train = Split(labels=identity[~held], images=images[~held])
    test = Split(labels=identity[held], images=images[held])
    pre = Preprocessing(image_size=args.image_size, color_mode="gray")  # as the experiments' faces (FER-2013 CSV)

    net = IdentityNet(args.identities)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(SplitDataset(train, train_transform(pre)), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    steps = args.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    labels = torch.from_numpy(train.labels)
    history = []
    with progress_bar(True) as bar:
        for epoch in range(1, args.epochs + 1):
            net.train()
            task = bar.add_task(f"identity epoch {epoch}", total=len(loader), info="")
            total, right, seen = 0.0, 0, 0
            for x, idx in loader:
                y = labels[idx]
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(y)
                right += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.update(task, advance=1, info=f"loss {total / seen:.3f}  train acc {right / seen:.3f}")
            row = {"epoch": epoch, "loss": total / seen, "train_acc": right / seen,
                   "heldout_acc": accuracy(net, test, pre)}
            history.append(row)
            print(json.dumps(row), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "wb") as fh:
        torch.save({"state_dict": net.msceleb_state_dict()}, fh)
    info = {"what": "synthetic face-identity pretraining (a stand-in for MS-Celeb-1M; not the real network)",
            "command": " ".join(["python benchmarks/pretrain_identity.py", *sys.argv[1:]]),
            "identities": args.identities, "train_images": len(train), "heldout_images": len(test),
            "image_size": args.image_size, "epochs": args.epochs, "generator_seed": args.seed,
            "closest_experiment_identity_distance": round(closest, 4),
            "heldout_identity_accuracy": history[-1]["heldout_acc"], "chance": 1.0 / args.identities,
            "history": history, "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__}
    write_json(args.out.with_suffix(".json"), info)
    print(f"wrote {args.out} ({info['seconds']} s); held-out identity accuracy {info['heldout_identity_accuracy']:.3f} "
          f"over {args.identities} identities (chance {1 / args.identities:.4f})")


if __name__ == "__main__":
    main()
