"""Runs the serving benchmark's scenarios (see scripts/bench-serve.sh) and prints RESULT lines
and a summary with the ratios.

  bench_serve.py RUNTIME_BINARY MODEL.onnx TOOLS_PYTHON SECONDS
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

runtime, model, tools_python, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
work = tempfile.mkdtemp(prefix="bench-serve-")
LUA = """
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*all"); f:close()
wrk.method = os.getenv("METHOD") or "POST"
if wrk.method == "POST" then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = os.getenv("HEADER_LEN")
else
  wrk.body = nil
end
"""
lua = os.path.join(work, "load.lua")
open(lua, "w").write(LUA)


def body(images, nz=100, seed=1):
    """A binary-extension infer request for `images` latents (and a binary output)."""
    header = json.dumps({
        "inputs": [{"name": "z", "shape": [images, nz], "datatype": "FP32",
                    "parameters": {"binary_data_size": 4 * images * nz}}],
        "outputs": [{"name": "image", "parameters": {"binary_data": True}}],
    }).encode()
    x, values = seed, []
    for _ in range(images * nz):  # a small LCG: reproducible latents without numpy
        x = (1103515245 * x + 12345) % 2**31
        values.append((x / 2**31 - 0.5) * 3.4)
    path = os.path.join(work, f"body{images}.bin")
    open(path, "wb").write(header + struct.pack(f"<{len(values)}f", *values))
    return path, len(header)


class Server:
    def __init__(self, *flags):
        self.p = subprocess.Popen([runtime, "serve", "--model", model, "--name", "g64", "--http-port", "0",
                                   "--grpc-port", "0", *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True)
        self.http = self.grpc = None
        while self.http is None or self.grpc is None:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit("runtime serve did not start")
            if line.startswith("HTTP: http://"):
                self.http = line.split("//", 1)[1].strip()
            elif line.startswith("gRPC: "):
                self.grpc = line.split(" ", 1)[1].strip()

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=30)


def ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(server, path, connections, body_file=None, header_len=0, method="POST", duration=seconds):
    env = dict(os.environ, BODY_FILE=body_file or lua, HEADER_LEN=str(header_len), METHOD=method)
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", lua,
                          f"http://{server.http}{path}"], env=env, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors under load:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return rps, ms(lat["50"]), ms(lat["99"])


def metrics(server):
    import urllib.request
    text = urllib.request.urlopen(f"http://{server.http}/metrics").read().decode()
    get = lambda f: float(re.search(rf"^{f}\{{[^}}]*\}} (\S+)", text, re.M).group(1))
    return get("gantry_inference_count") / max(get("gantry_inference_exec_count"), 1)


results = {}
one_path, one_len = body(1)
batch_path, batch_len = body(64)

print(f"== 64 clients x 1 image, {seconds} s each", flush=True)
for name, flags in [("batching", ["--max-batch-size", "64", "--max-queue-delay-us", "2000"]),
                    ("no-batching", ["--max-batch-size", "1"])]:
    s = Server(*flags)
    wrk(s, "/v2/models/g64/infer", 64, one_path, one_len, duration=3)  # warm-up
    rps, p50, p99 = wrk(s, "/v2/models/g64/infer", 64, one_path, one_len)
    avg = metrics(s)
    s.stop()
    results[name] = rps
    print(f"RESULT serve {name} c64 n1: {rps:.0f} img/s p50 {p50:.1f} ms p99 {p99:.1f} ms (average batch {avg:.1f})",
          flush=True)

print(f"== saturated: 4 clients x 64 images vs the library at batch 64", flush=True)
lib = subprocess.run([runtime, "bench", "--model", model, "--batch-size", "64", "--iterations", "40"],
                     capture_output=True, text=True, check=True).stdout
lib_ips = float(re.search(r"([\d.]+) img/s", lib).group(1))
print(f"RESULT library b64: {lib_ips:.0f} img/s ({lib.strip()})", flush=True)
lib1 = subprocess.run([runtime, "bench", "--model", model, "--batch-size", "1", "--iterations", "300"],
                      capture_output=True, text=True, check=True).stdout
lib1_ips = float(re.search(r"([\d.]+) img/s", lib1).group(1))
print(f"RESULT library b1: {lib1_ips:.0f} img/s", flush=True)
s = Server("--max-batch-size", "64", "--max-queue-delay-us", "2000")
wrk(s, "/v2/models/g64/infer", 4, batch_path, batch_len, duration=3)
rps, p50, p99 = wrk(s, "/v2/models/g64/infer", 4, batch_path, batch_len)
results["saturated"] = rps * 64
print(f"RESULT serve binary c4 n64: {rps * 64:.0f} img/s p50 {p50:.1f} ms p99 {p99:.1f} ms", flush=True)
rps, p50, p99 = wrk(s, "/v2/models/g64/generate?n=64&seed=1", 4, method="GET", duration=max(5, seconds // 2))
results["png"] = rps * 64
print(f"RESULT serve png c4 n64: {rps * 64:.0f} img/s p50 {p50:.1f} ms p99 {p99:.1f} ms", flush=True)
s.stop()

print(f"== tritonclient (binary data), 64 client threads x 1 image", flush=True)
s = Server("--max-batch-size", "64", "--max-queue-delay-us", "2000")
client = subprocess.run([tools_python, os.path.join(os.path.dirname(__file__), "bench_serve_client.py"),
                         s.http, s.grpc, "64", str(seconds)], capture_output=True, text=True, check=True).stdout
s.stop()
print(client.strip(), flush=True)

print()
print(f"dynamic batching vs --max-batch-size 1 (64 clients x 1 image): "
      f"{results['batching'] / results['no-batching']:.2f}x (goal >= 4x); the library's own batch scaling, "
      f"b64 vs b1, is {lib_ips / lib1_ips:.2f}x on this machine")
print(f"server with batching vs the library at batch 64: {results['batching'] / lib_ips:.2f}x; "
      f"without vs the library at batch 1: {results['no-batching'] / lib1_ips:.2f}x")
print(f"server (binary tensors, batch 64) vs library at batch 64: {results['saturated'] / lib_ips:.2f}x (goal >= 0.85x)")
print(f"PNG endpoint (64-image grids) vs library: {results['png'] / lib_ips:.2f}x")
