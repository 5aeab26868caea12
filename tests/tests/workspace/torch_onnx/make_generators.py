"""Third-party generators for the runtime's tests: small DCGAN generators exported by PyTorch's
own `torch.onnx.export` (the way people export the PyTorch DCGAN example), with the outputs
PyTorch computes for fixed latents.

Writes beside this file: g16x1.onnx and g16x3.onnx (latent [N, nz, 1, 1] named `input`,
unfolded BatchNormalization, output `output` in [-1, 1], no Gantry metadata) and expected.json
(the latents and PyTorch's outputs in eval mode). The test `runtime_library.rs` runs the files
in gantry-runtime and compares.

    python3 make_generators.py        (PyTorch >= 2.0 with `onnx`; committed files: 2.15.0, CPU)
"""
import json
import os

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
NZ = 8


def generator(channels, width=4):
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, width * 2, 4, 1, 0, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(True),
        nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
        nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh(),
    )


def short(values):
    return [float("%.9g" % v) for v in values]


torch.manual_seed(0)
expected = {}
for channels in (1, 3):
    g = generator(channels)
    with torch.no_grad():
        for m in g:
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.normal_(0.0, 0.3)
            elif isinstance(m, nn.BatchNorm2d):
                # Statistics as a trained network has them, so that BatchNorm matters.
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    g.eval()
    name = f"g16x{channels}"
    z = torch.randn(3, NZ, 1, 1)
    torch.onnx.export(
        g, z, os.path.join(HERE, f"{name}.onnx"), input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    with torch.no_grad():
        out = g(z)
    expected[name] = {"latents": short(z.flatten().tolist()), "shape": list(out.shape),
                      "output": short(out.flatten().tolist())}
expected["torch"] = torch.__version__
with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(expected, f, separators=(",", ":"))
    f.write("\n")
print("wrote", sorted(k for k in expected if k != "torch"))
