"""The PyTorch reference of the quality benchmark (scripts/quality-bench.sh, docs/quality.md): the
PyTorch example's DCGAN (bench/torch_dcgan.py) trained on MNIST or Fashion-MNIST (any folder of
28x28 IDX files) padded to 32x32, batch 128, for a number of steps, then N samples from fixed
latents with BatchNorm in eval and in train mode, as PNG folders that `trainer eval --images` scores.

    python3 bench/torch_dcgan_mnist.py --data data/mnist --out DIR --max-steps 938 [--n-samples 5000]

Writes DIR/samples_eval/*.png, DIR/samples_train/*.png, DIR/grid_eval.png (the first 64 eval-mode
samples, 8 x 8 with 2-pixel gaps, as Gantry's grids) and DIR/run.json (steps, seconds, losses).
At the end of each epoch it saves DIR/checkpoint.pt (networks, optimisers, the random state, the
step); a run started again on the same DIR resumes from it and ends exactly as an uninterrupted
run would (one thread: the same operations in the same order). It is removed when run.json is
written.
"""
import argparse
import gzip
import json
import os
import struct
import time
import zlib

import torch
import torch.nn as nn

from torch_dcgan import NZ, dcgan_init, discriminator, generator, train_step


def read_idx_images(folder):
    """MNIST's training images as uint8 [N, 28, 28] (raw or .gz IDX)."""
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            data = open(path, "rb").read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            n, h, w = struct.unpack(">III", data[4:16])
            return torch.frombuffer(bytearray(data[16:16 + n * h * w]), dtype=torch.uint8).view(n, h, w)
    raise SystemExit(f"no MNIST-format training images (train-images-idx3-ubyte[.gz]) in {folder}")


def write_png(path, pixels):
    """A greyscale PNG of uint8 [H, W], with the standard library only."""
    h, w = pixels.shape
    raw = b"".join(b"\x00" + bytes(row) for row in pixels.tolist())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(path, "wb").write(png)


def grid(images, cols=8, gap=2):
    """uint8 [N, H, W] images tiled `cols` per row on a black background with `gap` pixels around each."""
    n, h, w = images.shape
    rows = (n + cols - 1) // cols
    out = torch.zeros(gap + rows * (h + gap), gap + cols * (w + gap), dtype=torch.uint8)
    for k, im in enumerate(images):
        y, x = gap + (k // cols) * (h + gap), gap + (k % cols) * (w + gap)
        out[y:y + h, x:x + w] = im
    return out


@torch.no_grad()
def samples(g, z, train_mode, batch=500):
    """Images from fixed latents; train mode uses batch statistics, running ones are restored."""
    saved = {k: v.clone() for k, v in g.state_dict().items()}
    g.train(train_mode)
    out = torch.cat([g(z[i:i + batch]) for i in range(0, len(z), batch)])
    g.load_state_dict(saved)
    return ((out[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_checkpoint(path, state):
    """`state` to `path` through a temporary file and a rename."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", "--mnist", dest="data", required=True, help="folder of MNIST-format IDX files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-steps", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=100, help="upper bound; --max-steps usually ends the run")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    images = read_idx_images(a.data).float().div(127.5).sub(1.0)
    images = nn.functional.pad(images, (2, 2, 2, 2), value=-1.0).unsqueeze(1)  # 28 -> 32, black border
    g, d = generator(32, 1), discriminator(32, 1)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = (nn.BCEWithLogitsLoss(), torch.ones(a.batch), torch.zeros(a.batch))
    step, epoch, earlier, losses = 0, 0, 0.0, (0.0, 0.0)
    os.makedirs(a.out, exist_ok=True)
    checkpoint = os.path.join(a.out, "checkpoint.pt")
    if os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=False)
        if (state["seed"], state["batch"]) != (a.seed, a.batch):
            raise SystemExit(f"{checkpoint} is of seed {state['seed']}, batch {state['batch']}: not this run's")
        for module, key in ((g, "g"), (d, "d"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        torch.set_rng_state(state["rng"])
        step, epoch, earlier, losses = state["step"], state["epoch"], state["seconds"], state["losses"]
        print(f"resumed from {checkpoint} at step {step} (epoch {epoch})", flush=True)
    start = time.perf_counter()
    while epoch < a.epochs and step < a.max_steps:
        order = torch.randperm(len(images))
        for i in range(0, len(images) - a.batch + 1, a.batch):  # whole batches, as drop_last
            losses = train_step(g, d, opt_g, opt_d, images[order[i:i + a.batch]], criterion)
            step += 1
            if step % 100 == 0:
                print(f"step {step} loss_d {losses[0]:.3f} loss_g {losses[1]:.3f}", flush=True)
            if step >= a.max_steps:
                break
        else:
            epoch += 1
            save_checkpoint(checkpoint, {
                "g": g.state_dict(), "d": d.state_dict(), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "rng": torch.get_rng_state(), "step": step, "epoch": epoch,
                "seconds": earlier + time.perf_counter() - start, "losses": losses, "seed": a.seed,
                "batch": a.batch})
    seconds = earlier + time.perf_counter() - start
    z = torch.randn(a.n_samples, NZ, 1, 1, generator=torch.Generator().manual_seed(a.seed + 1))
    for mode in ("eval", "train"):
        folder = os.path.join(a.out, f"samples_{mode}")
        os.makedirs(folder, exist_ok=True)
        images = samples(g, z, mode == "train")
        for k, im in enumerate(images):
            write_png(os.path.join(folder, f"{k:05d}.png"), im)
        if mode == "eval":
            write_png(os.path.join(a.out, "grid_eval.png"), grid(images[:64]))
    summary = {"steps": step, "seconds": round(seconds, 1), "loss_d": losses[0], "loss_g": losses[1],
               "batch": a.batch, "samples": a.n_samples}
    tmp = os.path.join(a.out, "run.json.tmp")
    json.dump(summary, open(tmp, "w"), indent=1)
    os.replace(tmp, os.path.join(a.out, "run.json"))
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    print(f"wrote {a.n_samples} samples x 2 modes to {a.out}/samples_{{eval,train}}: {summary}")


if __name__ == "__main__":
    main()
