"""Golden numbers for Gantry's training step, produced by PyTorch.

Three GAN updates of a tiny DCGAN pair (16x16 grey images, latent 8, widths 4, batch 4) exactly
as the PyTorch DCGAN example trains: train-mode BatchNorm (batch statistics, running statistics
updated with momentum 0.1 and the unbiased variance), BCE-with-logits, one discriminator update
on a real and a detached fake batch, then one generator update through the updated
discriminator, Adam (betas 0.5/0.999, eps 1e-8) on both. Two recipes:

- `dcgan` (the paper's; writes dcgan_step.json): Adam lr 2e-4.
- `gantry` (Gantry's default; writes gantry_step.json): Adam lr 4e-4, every convolution of D
  wrapped in `torch.nn.utils.spectral_norm` (one power iteration per D update, from the u
  vector stored with the initial weights, as Gantry does: the iteration runs on D's first
  forward of the update and not on the others, so the G update uses the same u and v with
  D's updated weights), and an EMA of G after each G update (decay min(0.999, (1+t)/(10+t))
  at step t, parameters averaged, BatchNorm statistics copied).

The file holds the initial weights under Gantry's checkpoint names (spectral norm's
`weight_orig` as `weight`, its `weight_u`), each step's real batch and latents, each step's
losses and mean D outputs, and the weights, u vectors, running statistics (and EMA) after the
three steps. The test `golden_step.rs` replays the same steps through
`gantry_trainer::train::Networks::train_step` and compares.

    python3 step.py [dcgan|gantry]   (any PyTorch >= 2.0; the committed files came from 2.15.0, CPU)
"""
import copy
import json
import os
import sys

import torch
import torch.nn as nn

RECIPE = sys.argv[1] if len(sys.argv) > 1 else "dcgan"
assert RECIPE in ("dcgan", "gantry"), f"unknown recipe {RECIPE}"
SPECTRAL_NORM = RECIPE == "gantry"
LR = 4e-4 if RECIPE == "gantry" else 2e-4
EMA_DECAY = 0.999 if RECIPE == "gantry" else None

torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
NZ, BATCH, STEPS = 8, 4, 3

G = nn.Sequential(
    nn.ConvTranspose2d(NZ, 8, 4, 1, 0, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
    nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
    nn.ConvTranspose2d(4, 1, 4, 2, 1, bias=False), nn.Tanh(),
)
D = nn.Sequential(
    nn.Conv2d(1, 4, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
    nn.Conv2d(4, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
    nn.Conv2d(8, 1, 4, 1, 0, bias=False),
)
# Gantry's names for the modules: (module index, name prefix).
G_NAMES = [(0, "layers.0"), (1, "layers.0.bn"), (3, "layers.1"), (4, "layers.1.bn"), (6, "layers.2")]
D_NAMES = [(0, "layers.0"), (2, "layers.1"), (3, "layers.1.bn"), (5, "layers.2")]

# Initial weights larger than DCGAN's N(0, 0.02), and non-trivial BatchNorm affine parameters,
# so that every part of the step moves the numbers.
with torch.no_grad():
    for net in (G, D):
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.normal_(0.0, 0.2)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
# Spectral norm on every convolution of D (after the initialisation: it keeps the weight as
# weight_orig and draws its u and v vectors).
D_CONVS = [m for m in D if isinstance(m, nn.Conv2d)]
if SPECTRAL_NORM:
    for m in D_CONVS:
        nn.utils.spectral_norm(m)


def d_forward(x, power_iteration):
    """D on x; spectral norm iterates only when asked (it does on a module in training mode)."""
    for m in D_CONVS:
        m.training = power_iteration
    return D(x)


def short(values):
    """float32 values as the shortest decimals that read back to the same float32."""
    return [float("%.9g" % v) for v in values]


def tensors(net, names):
    out = {}
    for index, prefix in names:
        m = net[index]
        if isinstance(m, nn.BatchNorm2d):
            for key in ["weight", "bias", "running_mean", "running_var"]:
                out[f"{prefix}.{key}"] = getattr(m, key)
        elif hasattr(m, "weight_orig"):
            out[f"{prefix}.weight"] = m.weight_orig
            out[f"{prefix}.weight_u"] = m.weight_u
        else:
            out[f"{prefix}.weight"] = m.weight
    return {k: {"shape": list(v.shape), "values": short(v.detach().flatten().tolist())} for k, v in out.items()}


record = {"initial": {"generator": tensors(G, G_NAMES), "discriminator": tensors(D, D_NAMES)}, "steps": []}
crit = nn.BCEWithLogitsLoss()
opt_d = torch.optim.Adam(D.parameters(), lr=LR, betas=(0.5, 0.999), eps=1e-8)
opt_g = torch.optim.Adam(G.parameters(), lr=LR, betas=(0.5, 0.999), eps=1e-8)
G_EMA = copy.deepcopy(G) if EMA_DECAY else None
ones, zeros = torch.ones(BATCH), torch.zeros(BATCH)
G.train()
D.train()
for step in range(STEPS):
    real = torch.rand(BATCH, 1, 16, 16) * 2 - 1
    z = torch.randn(BATCH, NZ)
    D.zero_grad()
    fake = G(z.view(BATCH, NZ, 1, 1))
    out_real = d_forward(real, True).view(-1)
    out_fake = d_forward(fake.detach(), False).view(-1)
    loss_d = crit(out_real, ones) + crit(out_fake, zeros)
    loss_d.backward()
    opt_d.step()
    G.zero_grad()
    loss_g = crit(d_forward(fake, False).view(-1), ones)
    loss_g.backward()
    opt_g.step()
    if G_EMA is not None:
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for avg, live in zip(G_EMA.parameters(), G.parameters()):
                avg.mul_(decay).add_(live, alpha=1 - decay)
            for avg, live in zip(G_EMA.buffers(), G.buffers()):
                avg.copy_(live)
    record["steps"].append({
        "real": short(real.flatten().tolist()),
        "z": short(z.flatten().tolist()),
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "d_real": torch.sigmoid(out_real).mean().item(),
        "d_fake": torch.sigmoid(out_fake).mean().item(),
    })
record["final"] = {"generator": tensors(G, G_NAMES), "discriminator": tensors(D, D_NAMES)}
if G_EMA is not None:
    record["final"]["generator_ema"] = tensors(G_EMA, G_NAMES)
record["recipe"] = {"recipe": RECIPE, "lr": LR, "spectral_norm": SPECTRAL_NORM, "ema": EMA_DECAY}
record["torch"] = torch.__version__
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{RECIPE}_step.json")
with open(path, "w") as f:
    json.dump(record, f, separators=(",", ":"))
    f.write("\n")
print(f"wrote {path}")
