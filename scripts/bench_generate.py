#!/usr/bin/env python3
"""Generation speed of the same DCGAN weights in Python onnxruntime and PyTorch eager.
usage: bench_generate.py CHECKPOINT_DIR ONNX_FILE BATCH [ITERS]
Prints 'RESULT onnxruntime ...' and 'RESULT torch ...' lines (median ms per batch, img/s).
The PyTorch model is bench/torch_dcgan.py's generator with the checkpoint's weights
(read from generator.safetensors without extra packages)."""
import json, os, sys, time

import numpy as np

ckpt, onnx_file, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
iters = int(sys.argv[4]) if len(sys.argv) > 4 else 20


def median_ms(fn, iters, warm=3):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3


cfg = json.load(open(os.path.join(ckpt, "config.json")))["model"]
z = np.random.default_rng(0).standard_normal((batch, cfg["latent_dim"]), dtype=np.float32)

try:
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    ms = median_ms(lambda: sess.run(None, {"z": z}), iters)
    print(f"RESULT onnxruntime b{batch}: {ms:.3f} ms/batch {batch / ms * 1e3:.0f} img/s ({ort.__version__}, defaults)", flush=True)
except ImportError as e:
    print(f"skipping onnxruntime: {e}", file=sys.stderr)

try:
    import torch
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
    from torch_dcgan import load_gantry_generator
    torch.set_num_threads(os.cpu_count() or 2)
    g, _ = load_gantry_generator(ckpt)
    zt = torch.from_numpy(z).reshape(batch, -1, 1, 1)
    with torch.inference_mode():
        ms = median_ms(lambda: g(zt), iters)
        ort_out = sess.run(None, {"z": z})[0] if "sess" in dir() else None
        diff = float(np.abs(g(zt).numpy() - ort_out).max()) if ort_out is not None else float("nan")
    print(f"RESULT torch b{batch}: {ms:.3f} ms/batch {batch / ms * 1e3:.0f} img/s (torch {torch.__version__} eager fp32; max |torch - onnx| {diff:.2e})", flush=True)
except ImportError as e:
    print(f"skipping torch: {e}", file=sys.stderr)
