"""A load of N client threads through tritonclient (HTTP and gRPC, binary tensors), each asking
for one image at a time for SECONDS: throughput and latency as a Python client sees them.

  bench_serve_client.py HTTP_ADDR GRPC_ADDR N SECONDS
"""
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

http_addr, grpc_addr, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])


def run(protocol):
    latencies, lock = [], threading.Lock()
    stop = time.perf_counter() + seconds

    def client(i):
        mod = httpclient if protocol == "http" else grpcclient
        c = mod.InferenceServerClient(http_addr if protocol == "http" else grpc_addr)
        z = np.random.default_rng(i).standard_normal((1, 100), dtype=np.float32)
        inp = mod.InferInput("z", [1, 100], "FP32")
        inp.set_data_from_numpy(z)
        mine = []
        while time.perf_counter() < stop:
            t = time.perf_counter()
            c.infer("g64", [inp]).as_numpy("image")
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    print(f"RESULT tritonclient {protocol} c{n} n1: {len(lat) / wall:.0f} img/s "
          f"p50 {np.percentile(lat, 50):.1f} ms p99 {np.percentile(lat, 99):.1f} ms", flush=True)


run("http")
run("grpc")
