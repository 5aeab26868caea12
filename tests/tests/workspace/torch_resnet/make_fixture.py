"""An independent reference for Gantry's `--arch resnet`: small SNGAN ResNet pairs built by
bench/torch_resnet.py (PyTorch's own layers), unconditional and class-conditional (conditional
BatchNorm in G, a projection D), with random weights and trained-like BatchNorm statistics,
their outputs for fixed inputs, and the unconditional generator exported by `torch.onnx.export`.

Writes beside this file: fixture.json (per pair the configuration, every tensor under Gantry's
checkpoint names, latents and labels, the generator's eval-mode images, images for D
(sin(0.37 i)) and D's eval-mode logits with
spectral norm's v derived from u as Gantry derives it) and g32x3.onnx (input `z` [N, 16], output
`image`, no Gantry metadata). `resnet_reference.rs` loads the tensors into Gantry and compares.

    python3 make_fixture.py        (PyTorch >= 2.0 with `onnx`; committed files: 2.15.0, CPU)
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "bench"))
import torch_resnet  # noqa: E402

NZ, G_WIDTH, D_WIDTH, SIZE, CHANNELS = 16, 2, 4, 32, 3


def short(values):
    return [float("%.9g" % v) for v in values]


def pair(classes):
    """A G and D with random weights and trained-like statistics, and their outputs."""
    g = torch_resnet.Generator(SIZE, CHANNELS, nz=NZ, g_width=G_WIDTH, classes=classes)
    d = torch_resnet.Discriminator(SIZE, CHANNELS, d_width=D_WIDTH, classes=classes)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch_resnet.ClassBatchNorm)):
                # Statistics as a trained network has them, so that BatchNorm matters.
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
        for name, p in d.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    g.eval()
    # D's spectral norm in eval mode uses its stored u and v: make v what Gantry derives from u.
    torch_resnet.load_gantry_state(d, torch_resnet.gantry_state(d))
    d.eval()
    z = torch.randn(2, NZ)
    y = torch.tensor([0, 2]) if classes else None
    # D's input from a formula the test evaluates too: x[i] = sin(0.37 i), i over [2, C, H, W].
    x = torch.sin(0.37 * torch.arange(2 * CHANNELS * SIZE * SIZE, dtype=torch.float64)).float()
    x = x.reshape(2, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        images = g(z, y)
        logits = d(x, y)
    tensors = {**{f"generator/{k}": v for k, v in torch_resnet.gantry_state(g).items()},
               **{f"discriminator/{k}": v for k, v in torch_resnet.gantry_state(d).items()}}
    entry = {
        "config": {"arch": "resnet", "latent_dim": NZ, "image_size": SIZE, "channels": CHANNELS,
                   "g_width": G_WIDTH, "d_width": D_WIDTH, "spectral_norm": True,
                   "num_classes": classes},
        "tensors": {k: {"shape": list(v.shape), "values": short(v.flatten().tolist())}
                    for k, v in sorted(tensors.items())},
        "z": short(z.flatten().tolist()),
        "labels": y.tolist() if classes else None,
        "images": short(images.flatten().tolist()),
        "logits": short(logits.flatten().tolist()),
    }
    return g, z, entry


torch.manual_seed(0)
g, z, unconditional = pair(None)
torch.onnx.export(
    g, z, os.path.join(HERE, "g32x3.onnx"), input_names=["z"], output_names=["image"],
    dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}}, opset_version=17, dynamo=False,
)
_, _, conditional = pair(3)
fixture = {"unconditional": unconditional, "conditional": conditional, "torch": torch.__version__}
with open(os.path.join(HERE, "fixture.json"), "w") as f:
    json.dump(fixture, f, separators=(",", ":"))
    f.write("\n")
print("wrote", len(unconditional["tensors"]), "+", len(conditional["tensors"]), "tensors")
