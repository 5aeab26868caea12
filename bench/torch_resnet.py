"""The PyTorch reference of Gantry's `--arch resnet`: SNGAN's CIFAR ResNet (Miyato et al. 2018, as
pytorch-gan-collections writes it) with Gantry's widths and bias choices, written independently
of Gantry's spec so that the two can be compared.

G: linear z -> 4x4xC (a 4x4 ConvTranspose from 1x1, the same product), one up-block per doubling
(BN, ReLU, nearest x2, conv3x3, BN, ReLU, conv3x3; shortcut nearest x2, conv1x1), BN, ReLU,
conv3x3, tanh; C = 4 * g_width. D: one down-block per halving to 4x4 (the first without the
leading ReLU and with its shortcut pooling first), ReLU, sum over pixels, linear; C = 2 * d_width;
spectral norm on every D weight. Biases only where no BatchNorm follows. Conditional: G's block
BatchNorms class-conditional, D a projection discriminator. Xavier-uniform weights
(gain sqrt(2) inside the residual paths, 1 elsewhere).

State-dict keys are Gantry's checkpoint names (plus PyTorch's num_batches_tracked, and
spectral norm's weight_orig/weight_v), see gantry_state / load_gantry_state.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def blocks(image_size):
    """Residual blocks between 4x4 and the image size."""
    return (image_size // 4).bit_length() - 1


class ClassBatchNorm(nn.Module):
    """BatchNorm without its own affine map, then per-class gains and shifts picked by the
    labels (`weight`, `bias`: [classes, C], initialised to 1 and 0)."""

    def __init__(self, c, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(classes, c))
        self.bias = nn.Parameter(torch.zeros(classes, c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x, y):
        h = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, 0.1, 1e-5)
        return h * self.weight[y][:, :, None, None] + self.bias[y][:, :, None, None]


def batch_norm(c, classes):
    return ClassBatchNorm(c, classes) if classes else nn.BatchNorm2d(c)


def normalize(bn, x, y):
    return bn(x, y) if isinstance(bn, ClassBatchNorm) else bn(x)


class Conv(nn.Conv2d):
    """A convolution with an optional BatchNorm child named `bn` and an activation."""

    def __init__(self, cin, cout, k, bias, bn=False, act=None, gain=1.0, classes=None):
        super().__init__(cin, cout, k, 1, k // 2, bias=bias)
        self.bn = batch_norm(cout, classes) if bn else None
        self.act = act
        nn.init.xavier_uniform_(self.weight, gain)
        if bias:
            nn.init.zeros_(self.bias)

    def forward(self, x, y=None):
        h = super().forward(x)
        if self.bn is not None:
            h = normalize(self.bn, h, y)
        return self.act(h) if self.act is not None else h


class GBlock(nn.Module):
    def __init__(self, c, classes=None):
        super().__init__()
        self.bn1 = batch_norm(c, classes)
        self.conv1 = Conv(c, c, 3, bias=False, bn=True, act=F.relu, gain=math.sqrt(2), classes=classes)
        self.conv2 = Conv(c, c, 3, bias=False, gain=math.sqrt(2))
        self.shortcut = Conv(c, c, 1, bias=False)

    def forward(self, x, y=None):
        h = F.interpolate(F.relu(normalize(self.bn1, x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(self.conv1(h, y))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """`classes`: SNGAN's conditional generator, class-conditional BatchNorm in every block."""

    def __init__(self, image_size, channels, nz=128, g_width=64, classes=None):
        super().__init__()
        c = 4 * g_width
        self.nz = nz
        self.linear = nn.ConvTranspose2d(nz, c, 4, 1, 0, bias=False)
        # xavier as nn.Linear(nz, 16 C) would have it.
        bound = math.sqrt(6.0 / (nz + 16 * c))
        nn.init.uniform_(self.linear.weight, -bound, bound)
        self.blocks = nn.ModuleList([GBlock(c, classes) for _ in range(blocks(image_size))])
        self.bn = nn.BatchNorm2d(c)
        self.output = Conv(c, channels, 3, bias=True)

    def forward(self, z, y=None):
        h = self.linear(z.view(z.shape[0], -1, 1, 1))
        for block in self.blocks:
            h = block(h, y)
        h = F.relu(self.bn(h))
        return torch.tanh(self.output(h))


class DBlock(nn.Module):
    def __init__(self, cin, cout, first, sn):
        super().__init__()
        wrap = nn.utils.spectral_norm if sn else (lambda m: m)
        self.first = first
        self.conv1 = wrap(Conv(cin, cout, 3, bias=True, gain=math.sqrt(2)))
        self.conv2 = wrap(Conv(cout, cout, 3, bias=True, gain=math.sqrt(2)))
        self.shortcut = wrap(Conv(cin, cout, 1, bias=True))

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        if self.first:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        return h + F.avg_pool2d(self.shortcut(x), 2)


class Discriminator(nn.Module):
    """`classes`: a projection discriminator (Miyato & Koyama 2018): the logit gains
    <projection[y], h> over the pooled features h (the embedding spectrally normalised too)."""

    def __init__(self, image_size, channels, d_width=64, sn=True, classes=None):
        super().__init__()
        d = 2 * d_width
        self.blocks = nn.Sequential(
            *[DBlock(channels if i == 0 else d, d, i == 0, sn) for i in range(blocks(image_size))]
        )
        self.linear = Conv(d, 1, 1, bias=True)
        if sn:
            self.linear = nn.utils.spectral_norm(self.linear)
        self.projection = nn.Embedding(classes, d) if classes else None
        if self.projection is not None:
            nn.init.xavier_uniform_(self.projection.weight)
            if sn:  # as SNGAN's and BigGAN's SNEmbedding
                self.projection = nn.utils.spectral_norm(self.projection)

    def forward(self, x, y=None):
        h = F.relu(self.blocks(x)).sum(dim=(2, 3), keepdim=True)
        out = self.linear(h).flatten()
        if self.projection is not None:
            out = out + (self.projection(y) * h.flatten(1)).sum(1)
        return out


def gantry_state(module):
    """The module's tensors under Gantry's checkpoint names (spectral norm's `weight_orig` as
    `weight`, `weight_v` and `num_batches_tracked` dropped)."""
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked") or name.endswith("weight_v"):
            continue
        out[name.replace("weight_orig", "weight")] = t.detach().clone()
    return out


def load_gantry_state(module, tensors):
    """Loads tensors named as Gantry names them; spectral norm's `v` is set to
    normalize(W^T u), the vector Gantry derives from `u` before its first power iteration."""
    state = module.state_dict()
    with torch.no_grad():
        for name in state:
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("weight_v"):
                prefix = name[: -len("weight_v")]
                w = tensors[prefix + "weight"].reshape(tensors[prefix + "weight"].shape[0], -1)
                state[name].copy_(F.normalize(w.t() @ tensors[prefix + "weight_u"], dim=0, eps=1e-12))
                continue
            state[name].copy_(tensors[name.replace("weight_orig", "weight")])


def train_step_bench(image_size, channels, batch, g_width, d_width, steps=4, warmup=1):
    """Median time of one SNGAN step (one hinge D update on a real and a detached fake batch,
    then one G update; Adam 2e-4 (0, 0.9)) on random data; prints a RESULT line with img/s."""
    import os
    import time

    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(0)
    g = Generator(image_size, channels, nz=100, g_width=g_width)
    d = Discriminator(image_size, channels, d_width=d_width)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.9))
    real = torch.rand(batch, channels, image_size, image_size) * 2 - 1
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        fake = g(torch.randn(batch, 100))
        loss_d = F.relu(1 - d(real)).mean() + F.relu(1 + d(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = -d(fake).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        values = (loss_d.item(), loss_g.item())
        if step >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    print(f"RESULT torch-train resnet img{image_size}x{channels} b{batch}: {median * 1e3:.2f} ms/step "
          f"{batch / median:.0f} img/s (losses {values[0]:.3f} {values[1]:.3f})", flush=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["train"] or len(sys.argv) < 7:
        sys.exit("usage: torch_resnet.py train SIZE CHANNELS BATCH G_WIDTH D_WIDTH [STEPS]")
    size, channels, batch, gw, dw = map(int, sys.argv[2:7])
    train_step_bench(size, channels, batch, gw, dw, steps=int(sys.argv[7]) if len(sys.argv) > 7 else 4)
