"""The PyTorch reference for Gantry's speed benchmarks: the DCGAN of the PyTorch example (latent
100, widths 64, BatchNorm, ReLU/LeakyReLU 0.2, Tanh), at any power-of-two image size, trained as
the example trains it (Adam 2e-4 / (0.5, 0.999), BCE-with-logits, one D step on a real and a
detached fake batch, then one G step), and generating in eval mode.

Used by scripts/bench-train.sh (train_step_bench) and scripts/bench_generate.py (generator with
a Gantry checkpoint's weights). Its layer order matches Gantry's checkpoint names, see
load_gantry_generator.

    python3 bench/torch_dcgan.py train 32 1 64 [STEPS]           'RESULT torch-train ... img/s'
    python3 bench/torch_dcgan.py generate 64 3 64 [ITERS] [fp16]  'RESULT torch-gen ... img/s'
"""
import json
import os
import struct
import sys
import time

import torch
import torch.nn as nn

NZ, WIDTH = 100, 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def stages(image_size):
    """Stride-2 stages between 4x4 and the image size."""
    return (image_size // 4).bit_length() - 1


def generator(image_size, channels, nz=NZ, width=WIDTH):
    """ConvTranspose to 4x4, then stride-2 ConvTranspose + BN + ReLU stages, Tanh out."""
    n = stages(image_size)
    ch = width << (n - 1)
    layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
    for _ in range(n - 1):
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
        ch //= 2
    layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator(image_size, channels, width=WIDTH):
    """Stride-2 Conv + (BN) + LeakyReLU stages (no BN on the first), then a 4x4 Conv to a logit."""
    n = stages(image_size)
    layers = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    ch = width
    for _ in range(n - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
        ch *= 2
    layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
    return nn.Sequential(*layers)


def dcgan_init(module):
    """The DCGAN paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def train_step(g, d, opt_g, opt_d, real, criterion):
    """One step as the PyTorch example takes it: D on a real and a detached fake batch, then G.
    `criterion` is (BCE-with-logits, ones, zeros); returns the two losses as floats."""
    loss, ones, zeros = criterion
    d.zero_grad(set_to_none=True)
    fake = g(torch.randn(real.shape[0], NZ, 1, 1, device=real.device))
    loss_d = loss(d(real).view(-1), ones) + loss(d(fake.detach()).view(-1), zeros)
    loss_d.backward()
    opt_d.step()
    g.zero_grad(set_to_none=True)
    loss_g = loss(d(fake).view(-1), ones)
    loss_g.backward()
    opt_g.step()
    return loss_d.item(), loss_g.item()


def train_step_bench(image_size, channels, batch, steps=6, warmup=2):
    """Median time of a training step on random data; prints a RESULT line with img/s."""
    torch.manual_seed(0)
    g = generator(image_size, channels).to(DEVICE)
    d = discriminator(image_size, channels).to(DEVICE)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    loss = nn.BCEWithLogitsLoss()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, channels, image_size, image_size, device=DEVICE) * 2 - 1
    ones = torch.ones(batch, device=DEVICE)
    zeros = torch.zeros(batch, device=DEVICE)
    times = []
    for step in range(warmup + steps):
        synchronize()
        start = time.perf_counter()
        # Reading the losses synchronises, as a training loop's logging does.
        values = train_step(g, d, opt_g, opt_d, real, (loss, ones, zeros))
        synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    print(f"RESULT torch-train img{image_size}x{channels} b{batch}: {median * 1e3:.2f} ms/step "
          f"{batch / median:.0f} img/s (losses {values[0]:.3f} {values[1]:.3f})", flush=True)
    return batch / median


def generate_bench(image_size, channels, batch, half=False, iters=50):
    """Median time of one generator batch in eval mode; prints a RESULT line with img/s."""
    torch.manual_seed(0)
    g = generator(image_size, channels).to(DEVICE).eval()
    g.apply(dcgan_init)
    dtype = torch.half if half else torch.float
    g = g.to(dtype)
    z = torch.randn(batch, NZ, 1, 1, device=DEVICE, dtype=dtype)
    with torch.inference_mode():
        for _ in range(5):
            g(z)
        times = []
        for _ in range(iters):
            synchronize()
            start = time.perf_counter()
            g(z)
            synchronize()
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    print(f"RESULT torch-gen img{image_size}x{channels} b{batch} {'fp16' if half else 'fp32'}: "
          f"{median * 1e3:.3f} ms/batch {batch / median:.0f} img/s", flush=True)


def read_safetensors(path):
    """A safetensors file of f32 tensors as {name: tensor}, without the safetensors package."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32).reshape(info["shape"])
    return out


def load_gantry_generator(checkpoint_dir):
    """The generator of a Gantry checkpoint folder as this module's PyTorch network (eval mode).
    Gantry's `layers.{i}.weight` / `layers.{i}.bn.*` are Sequential entries 3i and 3i + 1."""
    model = json.load(open(os.path.join(checkpoint_dir, "config.json")))["model"]
    g = generator(model["image_size"], model["channels"], model["latent_dim"], model["g_width"])
    weights = read_safetensors(os.path.join(checkpoint_dir, "generator.safetensors"))
    state = {}
    for name, tensor in weights.items():
        parts = name.split(".")
        index = int(parts[1])
        if parts[2] == "bn":
            state[f"{3 * index + 1}.{parts[3]}"] = tensor
        else:
            state[f"{3 * index}.weight"] = tensor
    missing, unexpected = g.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    return g.eval(), model


if __name__ == "__main__":
    command = sys.argv[1:2]
    if command not in (["train"], ["generate"]):
        sys.exit(__doc__)
    size, channels, batch = map(int, sys.argv[2:5])
    count = int(sys.argv[5]) if len(sys.argv) > 5 else None
    if DEVICE == "cpu":
        torch.set_num_threads(os.cpu_count() or 2)
    else:
        torch.backends.cudnn.benchmark = True
    if command == ["train"]:
        train_step_bench(size, channels, batch, steps=count or 6)
    else:
        generate_bench(size, channels, batch, half=sys.argv[6:7] == ["fp16"], iters=count or 50)
