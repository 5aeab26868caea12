"""The PyTorch reference of the ResNet quality benchmark (issue 29, scripts/quality-bench.sh):
bench/torch_resnet.py's SNGAN ResNet trained with Gantry's `--preset sngan` recipe (hinge loss,
spectral norm in D with one power iteration per D update (real and fake batches through D in one
forward, none at G's update), N D updates per G update each on its own batch, Adam 2e-4 with betas (0, 0.9),
an EMA of G with Gantry's warm-up min(decay, (1 + t) / (10 + t)) and its BatchNorm statistics
recomputed for the averaged weights), then N samples of the EMA generator in eval mode as PNGs
that `trainer eval --images --metric inception` scores.

    python3 bench/torch_resnet_train.py --data data/fashion-mnist --out DIR --max-steps 2000 \
        [--g-width 16 --d-width 16 --batch 64 --d-steps 5 --n-samples 2000 --seed 0 --conditional]

Data: a folder of MNIST-format IDX files (28x28 grey, padded to 32 with black as Gantry's
`--fit pad`), or a folder of 32x32 PNGs with one subfolder per class (the cats and dogs).
Writes DIR/samples/*.png (conditional: DIR/samples/<class>/*.png, image k of class k % classes),
DIR/grid.png and
DIR/run.json (steps, seconds, losses). Every 100 steps the whole state (networks, EMA, optimisers,
data order, RNG) goes to DIR/checkpoint.pt, and a rerun with the same arguments resumes from it:
the benchmark spans sessions that end mid-run.
"""
import argparse
import copy
import gzip
import json
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import torch_resnet


def read_idx(folder, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            data = open(path, "rb").read()
            return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return None


def load(folder):
    """Images as float [N, C, 32, 32] in [-1, 1] and labels [N]."""
    data = read_idx(folder, "train-images-idx3-ubyte")
    if data is not None:
        n, h, w = struct.unpack(">III", data[4:16])
        x = torch.frombuffer(bytearray(data[16:16 + n * h * w]), dtype=torch.uint8).view(n, 1, h, w)
        x = F.pad(x.float().div(127.5).sub(1.0), (2, 2, 2, 2), value=-1.0)
        labels = read_idx(folder, "train-labels-idx1-ubyte")
        y = torch.frombuffer(bytearray(labels[8:8 + n]), dtype=torch.uint8).long()
        return x, y
    # Class folders as Gantry reads them: hidden ones (its `.gantry` cache) are not classes.
    classes = sorted(d for d in os.listdir(folder)
                     if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    images, labels = [], []
    for k, c in enumerate(classes):
        for name in sorted(os.listdir(os.path.join(folder, c))):
            if not name.lower().endswith((".png", ".jpg", ".jpeg")):
                continue
            im = Image.open(os.path.join(folder, c, name)).convert("RGB").resize((32, 32))
            images.append(np.asarray(im))
            labels.append(k)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x, torch.tensor(labels)


@torch.no_grad()
def ema_update(avg, g, decay, step):
    d = min(decay, (1 + step) / (10 + step))
    for pa, p in zip(avg.parameters(), g.parameters()):
        pa.mul_(d).add_(p, alpha=1 - d)


@torch.no_grad()
def recalibrate(g, nz, classes, batches=16, batch=128):
    """Running statistics as the average over train-mode batches (momentum 1/(i+1))."""
    g.train()
    for i in range(batches):
        for m in g.modules():
            if hasattr(m, "running_mean"):
                m.momentum = 1.0 / (i + 1)
        y = torch.randint(classes, (batch,)) if classes else None
        g(torch.randn(batch, nz), y)
    for m in g.modules():
        if hasattr(m, "running_mean"):
            m.momentum = 0.1
    g.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-steps", type=int, required=True)
    ap.add_argument("--g-width", type=int, default=16)
    ap.add_argument("--d-width", type=int, default=16)
    ap.add_argument("--latent-dim", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--d-steps", type=int, default=5)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conditional", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x, y = load(a.data)
    classes = int(y.max()) + 1 if a.conditional else None
    channels = x.shape[1]
    g = torch_resnet.Generator(32, channels, nz=a.latent_dim, g_width=a.g_width, classes=classes)
    d = torch_resnet.Discriminator(32, channels, d_width=a.d_width, classes=classes)
    avg = copy.deepcopy(g)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.9))
    order, at = torch.randperm(len(x)), 0

    def next_batch():
        nonlocal order, at
        if at + a.batch > len(x):  # whole batches, as drop_last
            order, at = torch.randperm(len(x)), 0
        idx = order[at:at + a.batch]
        at += a.batch
        return x[idx], (y[idx] if classes else None)

    ckpt = os.path.join(a.out, "checkpoint.pt")
    first, spent = 0, 0.0
    if os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        for name, obj in (("g", g), ("d", d), ("avg", avg), ("opt_g", opt_g), ("opt_d", opt_d)):
            obj.load_state_dict(st[name])
        order, at, first, spent = st["order"], st["at"], st["step"], st["seconds"]
        torch.set_rng_state(st["rng"])
        print(f"resumed from {ckpt} at step {first}", flush=True)

    def save(step, seconds):
        os.makedirs(a.out, exist_ok=True)
        st = {"g": g.state_dict(), "d": d.state_dict(), "avg": avg.state_dict(),
              "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "order": order, "at": at,
              "step": step, "seconds": seconds, "rng": torch.get_rng_state()}
        torch.save(st, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    start = time.perf_counter() - spent
    for step in range(first, a.max_steps):
        for _ in range(a.d_steps):
            real, labels = next_batch()
            fake = g(torch.randn(a.batch, a.latent_dim), labels)
            # Real and fake through D in one forward: spectral norm's power iteration runs once
            # per D update, as Gantry's (D has no BatchNorm, so nothing else mixes the halves).
            both = torch.cat([labels, labels]) if classes else None
            d_real, d_fake = d(torch.cat([real, fake.detach()]), both).split(a.batch)
            loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        d.eval()  # no power iteration at G's update either (Gantry iterates at D's updates only)
        loss_g = -d(fake, labels).mean()
        d.train()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema_update(avg, g, a.ema, step)
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f}", flush=True)
            save(step + 1, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    avg.load_state_dict({**avg.state_dict(), **{k: v for k, v in g.state_dict().items() if "running" in k}})
    recalibrate(avg, a.latent_dim, classes)
    gen = torch.Generator().manual_seed(a.seed + 1)
    z = torch.randn(a.n_samples, a.latent_dim, generator=gen)
    labels = torch.arange(a.n_samples) % classes if classes else None
    with torch.no_grad():
        out = torch.cat([avg(z[i:i + 500], labels[i:i + 500] if classes else None)
                         for i in range(0, a.n_samples, 500)])
    pixels = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    folder = os.path.join(a.out, "samples")
    os.makedirs(folder, exist_ok=True)
    mode = "L" if channels == 1 else "RGB"
    for k, im in enumerate(pixels):
        # Conditional samples go to one subfolder per class asked for, which `trainer eval
        # --images` reads as the classes to measure agreement with.
        sub = os.path.join(folder, str(k % classes)) if classes else folder
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(im[:, :, 0] if channels == 1 else im, mode).save(os.path.join(sub, f"{k:05d}.png"))
    grid = np.zeros((8 * 34, 8 * 34, pixels.shape[3]), np.uint8)
    for k, im in enumerate(pixels[:64]):
        r, c = divmod(k, 8)
        grid[r * 34 + 1:r * 34 + 33, c * 34 + 1:c * 34 + 33] = im
    Image.fromarray(grid[:, :, 0] if channels == 1 else grid, mode).save(os.path.join(a.out, "grid.png"))
    summary = {"steps": a.max_steps, "seconds": round(seconds, 1), "batch": a.batch, "d_steps": a.d_steps, "samples": a.n_samples}
    tmp = os.path.join(a.out, "run.json.tmp")
    json.dump(summary, open(tmp, "w"), indent=1)
    os.replace(tmp, os.path.join(a.out, "run.json"))
    print(f"wrote {a.n_samples} samples to {folder}: {summary}")


if __name__ == "__main__":
    main()
