# Sourced on a GPU machine whose CUDA libraries come from PyPI wheels (PyTorch's `nvidia-*`
# packages): adds the folders holding cudart, cuBLAS, cuRAND, cuDNN and cuFFT, and the driver's
# folder, to LD_LIBRARY_PATH, for candle's CUDA binaries and ONNX Runtime's CUDA provider.
gantry_cuda_dirs=$(python3 -c '
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
names = ["libcudart.so.*", "libcublas.so.*", "libcublasLt.so.*", "libcurand.so.*", "libcudnn.so.*", "libcufft.so.*"]
dirs = set()
for root in nvidia.__path__:
    for name in names:
        dirs.update(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", name), recursive=True))
print(":".join(sorted(dirs)))
')
export LD_LIBRARY_PATH="${gantry_cuda_dirs:+$gantry_cuda_dirs:}/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset gantry_cuda_dirs
