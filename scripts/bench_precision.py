#!/usr/bin/env python3
"""Generation speed per precision in Python: onnxruntime on Gantry's exports of each precision,
PyTorch eager fp32, and PyTorch's own static int8 quantization (FX graph mode, x86/fbgemm
backend; ConvTranspose2d only takes per-tensor weights there) of the same raw weights.
usage: bench_precision.py CHECKPOINT_DIR BATCH ITERS NAME=ONNX_FILE...
Prints 'RESULT onnxruntime-NAME b...', 'RESULT torch b...' and 'RESULT torch-int8 b...' lines
(median ms per batch, img/s), with each one's largest difference from the fp32 export."""
import copy
import os
import sys
import time
import warnings

import numpy as np

ckpt, batch, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
files = dict(arg.split("=", 1) for arg in sys.argv[4:])


def median_ms(fn, warm=3):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3


def report(engine, ms, note):
    print(f"RESULT {engine} b{batch}: {ms:.3f} ms/batch {batch / ms * 1e3:.0f} img/s ({note})", flush=True)


import onnxruntime as ort
import torch

z = np.random.default_rng(0).standard_normal((batch, 100), dtype=np.float32)
reference = None
for name, path in files.items():
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"z": z})[0]
    reference = out if name == "fp32" else reference
    diff = float(np.abs(out - reference).max()) if reference is not None else float("nan")
    report(f"onnxruntime-{name}", median_ms(lambda: sess.run(None, {"z": z})),
           f"onnxruntime {ort.__version__}; max |x - fp32| {diff:.2e}")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_dcgan import load_gantry_generator  # noqa: E402

torch.set_num_threads(os.cpu_count() or 2)
g, _ = load_gantry_generator(ckpt)
zt = torch.from_numpy(z).reshape(batch, -1, 1, 1)
with torch.inference_mode():
    diff = float(np.abs(g(zt).numpy() - reference).max()) if reference is not None else float("nan")
    report("torch", median_ms(lambda: g(zt)), f"torch {torch.__version__} eager fp32; max |x - fp32 export| {diff:.2e}")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.ao.quantization import QConfig, HistogramObserver, default_weight_observer, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "x86"
    per_tensor = QConfig(activation=HistogramObserver.with_args(reduce_range=False), weight=default_weight_observer)
    mapping = get_default_qconfig_mapping("x86").set_object_type(torch.nn.ConvTranspose2d, per_tensor)
    prepared = prepare_fx(copy.deepcopy(g), mapping, (zt,))
    calibration = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(8):  # the exporter's default: 8 batches of 64 latents
            prepared(torch.randn(64, 100, 1, 1, generator=calibration))
    q = convert_fx(prepared)
with torch.inference_mode():
    diff = float(np.abs(q(zt).numpy() - reference).max()) if reference is not None else float("nan")
    report("torch-int8", median_ms(lambda: q(zt)), f"torch FX static int8, x86 backend; max |x - fp32 export| {diff:.2e}")
