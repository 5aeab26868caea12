"""Golden numbers for Gantry's training step, produced by PyTorch.

Three DCGAN updates of a tiny pair (16x16 grey images, latent 8, widths 4, batch 4) exactly as
the PyTorch DCGAN example trains: train-mode BatchNorm (batch statistics, running statistics
updated with momentum 0.1 and the unbiased variance), BCE-with-logits, one discriminator update
on a real and a detached fake batch, then one generator update through the updated
discriminator, Adam (lr 2e-4, betas 0.5/0.999, eps 1e-8) on both.

Writes dcgan_step.json beside this file: the initial weights under Gantry's checkpoint names,
each step's real batch and latents, each step's losses and mean D outputs, and the weights and
running statistics after the three steps. The test `golden_step.rs` replays the same steps
through `gantry_trainer::train::Networks::train_step` and compares.

    python3 dcgan_step.py        (any PyTorch >= 2.0; the committed file came from 2.15.0, CPU)
"""
import json
import os

import torch
import torch.nn as nn

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
        else:
            out[f"{prefix}.weight"] = m.weight
    return {k: {"shape": list(v.shape), "values": short(v.detach().flatten().tolist())} for k, v in out.items()}


record = {"initial": {"generator": tensors(G, G_NAMES), "discriminator": tensors(D, D_NAMES)}, "steps": []}
crit = nn.BCEWithLogitsLoss()
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
ones, zeros = torch.ones(BATCH), torch.zeros(BATCH)
G.train()
D.train()
for step in range(STEPS):
    real = torch.rand(BATCH, 1, 16, 16) * 2 - 1
    z = torch.randn(BATCH, NZ)
    D.zero_grad()
    fake = G(z.view(BATCH, NZ, 1, 1))
    out_real = D(real).view(-1)
    out_fake = D(fake.detach()).view(-1)
    loss_d = crit(out_real, ones) + crit(out_fake, zeros)
    loss_d.backward()
    opt_d.step()
    G.zero_grad()
    loss_g = crit(D(fake).view(-1), ones)
    loss_g.backward()
    opt_g.step()
    record["steps"].append({
        "real": short(real.flatten().tolist()),
        "z": short(z.flatten().tolist()),
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "d_real": torch.sigmoid(out_real).mean().item(),
        "d_fake": torch.sigmoid(out_fake).mean().item(),
    })
record["final"] = {"generator": tensors(G, G_NAMES), "discriminator": tensors(D, D_NAMES)}
record["torch"] = torch.__version__
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dcgan_step.json")
with open(path, "w") as f:
    json.dump(record, f, separators=(",", ":"))
    f.write("\n")
print(f"wrote {path}")
