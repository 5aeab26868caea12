"""Drives a running `runtime serve` with the real tritonclient (HTTP and gRPC) and checks what
comes back against the images the Rust test computed with the gantry-runtime library.

  client_check.py MANIFEST.json

The manifest names the server's ports, and per model its latents (and labels), the expected
output and the tolerance. Prints one line per check; exits non-zero on the first failure.
"""
import json
import os
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

manifest = json.load(open(sys.argv[1]))
base = os.path.dirname(os.path.abspath(sys.argv[1]))
HTTP, GRPC = manifest["http"], manifest["grpc"]
http = httpclient.InferenceServerClient(HTTP, concurrency=8)
grpc = grpcclient.InferenceServerClient(GRPC)


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def load(name, dtype, shape):
    return np.fromfile(os.path.join(base, name), dtype=dtype).reshape(shape)


def inputs_for(module, m, z, labels, binary=True):
    ins = [module.InferInput(m["latent_input"], list(z.shape), "FP32")]
    kw = {} if module is grpcclient else {"binary_data": binary}
    ins[0].set_data_from_numpy(z, **kw)
    if labels is not None:
        ins.append(module.InferInput(m["label_input"], list(labels.shape), "INT64"))
        ins[1].set_data_from_numpy(labels, **kw)
    return ins


def infer(protocol, name, m, z, labels, binary=True, version=""):
    if protocol == "http":
        outs = [httpclient.InferRequestedOutput(m["output"], binary_data=binary)]
        r = http.infer(name, inputs_for(httpclient, m, z, labels, binary), outputs=outs, model_version=version)
    else:
        r = grpc.infer(name, inputs_for(grpcclient, m, z, labels), model_version=version)
    return r.as_numpy(m["output"])


def close(got, want, tol):
    if got is None or got.shape != want.shape or got.dtype != want.dtype:
        return False
    if tol == 0:
        return np.array_equal(got, want)
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) <= tol


def expect_error(fn, status, what):
    try:
        fn()
    except InferenceServerException as e:
        got = str(e.status())
        check(status in got, f"{what}: {got} {e.message()[:90]}")
        return
    check(False, f"{what}: no error")


# -- metadata --------------------------------------------------------------------------------
check(http.is_server_live() and http.is_server_ready(), "http: server live and ready")
check(grpc.is_server_live() and grpc.is_server_ready(), "grpc: server live and ready")
meta = http.get_server_metadata()
check(meta["name"] == "gantry" and "binary_tensor_data" in meta["extensions"], f"http: server metadata {meta}")
check(grpc.get_server_metadata().name == "gantry", "grpc: server metadata")

for name, m in manifest["models"].items():
    md = http.get_model_metadata(name)
    ins = {t["name"]: t for t in md["inputs"]}
    out = md["outputs"][0]
    check(ins[m["latent_input"]]["datatype"] == "FP32" and ins[m["latent_input"]]["shape"][0] == -1,
          f"http: {name} latent input {ins[m['latent_input']]}")
    check(out["name"] == m["output"] and out["datatype"] == m["datatype"] and out["shape"][1:] == m["image_shape"],
          f"http: {name} output {out}")
    check(md["versions"] == m["versions"], f"http: {name} versions {md['versions']}")
    gmd = grpc.get_model_metadata(name)
    check([t.name for t in gmd.inputs] == [t["name"] for t in md["inputs"]]
          and list(gmd.outputs[0].shape) == out["shape"], f"grpc: {name} metadata")
    check(http.is_model_ready(name) and grpc.is_model_ready(name), f"{name} ready")

# -- inference against the library's images ------------------------------------------------
for name, m in manifest["models"].items():
    z = load(m["latents"], np.float32, m["latents_shape"])
    labels = load(m["labels"], np.int64, [z.shape[0]]) if m.get("labels") else None
    want = load(m["expected"], m["dtype"], m["expected_shape"])
    z4 = z.reshape(z.shape[0], z.shape[1], 1, 1)
    for protocol, binary, zz, what in [
        ("http", True, z, "binary"),
        ("http", False, z, "JSON"),
        ("grpc", True, z, "raw"),
        ("http", True, z4, "binary, [N, nz, 1, 1] latents"),
    ]:
        got = infer(protocol, name, m, zz, labels, binary)
        check(close(got, want, m["tolerance"]),
              f"{protocol} ({what}): {name} gives the library's images for the same latents "
              f"(shape {None if got is None else got.shape}, tolerance {m['tolerance']})")
    for v in m["versions"]:
        got = infer("http", name, m, z[:1], None if labels is None else labels[:1], True, version=v)
        check(close(got, want[:1], 1e-5), f"http: {name} version {v} answers")

# -- requests that must fail, and the server goes on -----------------------------------------
name, m = next((n, m) for n, m in manifest["models"].items() if not m.get("labels"))
z = load(m["latents"], np.float32, m["latents_shape"])[:2]
expect_error(lambda: infer("http", "no-such-model", m, z, None), "404", "http: unknown model")
expect_error(lambda: infer("grpc", "no-such-model", m, z, None), "NOT_FOUND", "grpc: unknown model")
expect_error(lambda: infer("http", name, m, z, None, version="99"), "404", "http: unknown version")
bad = httpclient.InferInput(m["latent_input"], list(z.shape), "FP64")
bad.set_data_from_numpy(z.astype(np.float64))
expect_error(lambda: http.infer(name, [bad]), "400", "http: wrong datatype")
wrong = z[:, :-1].copy()
expect_error(lambda: infer("http", name, m, wrong, None), "400", "http: wrong latent size")
expect_error(lambda: infer("grpc", name, m, wrong, None), "INVALID_ARGUMENT", "grpc: wrong latent size")
big = np.zeros((4097, z.shape[1]), np.float32)
expect_error(lambda: infer("http", name, m, big, None), "400", "http: too many images")
# The server runs with --max-body-mb 2: a gRPC message over it is OUT_OF_RANGE.
huge = np.zeros(((3 << 20) // (4 * z.shape[1]), z.shape[1]), np.float32)  # 3 MiB
expect_error(lambda: infer("grpc", name, m, huge, None), "OUT_OF_RANGE", "grpc: a message over the limit")
cond = next(((n, c) for n, c in manifest["models"].items() if c.get("labels")), None)
if cond:
    cname, cm = cond
    cz = load(cm["latents"], np.float32, cm["latents_shape"])[:2]
    expect_error(lambda: infer("http", cname, cm, cz, None), "400", "http: conditional model without labels")
    expect_error(lambda: infer("http", cname, cm, cz, np.array([0, 99], np.int64)), "400", "http: label out of range")
    expect_error(lambda: infer("grpc", cname, cm, cz, np.array([0, -1], np.int64)), "INVALID_ARGUMENT", "grpc: negative label")


def raw_post(path, body, headers=None):
    req = urllib.request.Request(f"http://{HTTP}{path}", data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


for body, headers, what in [
    (b'{"inputs": [', {}, "malformed JSON"),
    (b'{"inputs": [{"name": "z"}]}', {}, "an input without shape"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, "a header length past the body"),
    (json.dumps({"inputs": [{"name": m["latent_input"], "shape": [1, z.shape[1]], "datatype": "FP32",
                             "parameters": {"binary_data_size": 4 * z.shape[1]}}]}).encode() + b"\0" * 8,
     None, "binary data shorter than declared"),
    (json.dumps({"inputs": [{"name": m["latent_input"], "shape": [1, z.shape[1]], "datatype": "FP32",
                             "data": ["a"] * z.shape[1]}]}).encode(), {}, "strings as FP32 data"),
]:
    if headers is None:
        j = body[: body.index(b"}]}") + 3]
        headers = {"Inference-Header-Content-Length": str(len(j))}
    status, text = raw_post(f"/v2/models/{name}/infer", body, headers)
    err = json.loads(text).get("error", "") if text.startswith(b"{") else ""
    check(status == 400 and err, f"http: {what} -> {status} {err[:80]}")
status, text = raw_post(f"/v2/models/{name}/infer", b"x" * (3 << 20))
check(status == 413 and "over the limit" in json.loads(text)["error"], f"http: a body over the limit -> {status} {text[:80]}")
check(http.is_server_live() and http.is_server_ready(), "http: still serving after the bad requests")

# -- many clients at once: each gets its own images back --------------------------------------
conc = manifest["concurrency"]
cm = manifest["models"][conc["model"]]
cz = load(conc["latents"], np.float32, conc["latents_shape"])
clabels = load(conc["labels"], np.int64, [cz.shape[0]]) if conc.get("labels") else None
cwant = load(conc["expected"], cm["dtype"], conc["expected_shape"])
per = conc["per_client"]
failures = []


def client(i):
    try:
        lo, hi = i * per, (i + 1) * per
        protocol = "grpc" if i % 3 == 0 else "http"
        c_http = httpclient.InferenceServerClient(HTTP)
        c_grpc = grpcclient.InferenceServerClient(GRPC)
        for rep in range(conc["repeats"]):
            ins_mod = grpcclient if protocol == "grpc" else httpclient
            ins = inputs_for(ins_mod, cm, cz[lo:hi], None if clabels is None else clabels[lo:hi])
            r = (c_grpc if protocol == "grpc" else c_http).infer(conc["model"], ins)
            got = r.as_numpy(cm["output"])
            if not close(got, cwant[lo:hi], 1e-5):
                err = np.max(np.abs(got.astype(np.float64) - cwant[lo:hi])) if got is not None and got.shape == cwant[lo:hi].shape else "shape"
                failures.append(f"client {i} repeat {rep}: {err}")
    except Exception as e:  # noqa: BLE001 - report any client failure
        failures.append(f"client {i}: {e!r}")


threads = [threading.Thread(target=client, args=(i,)) for i in range(conc["clients"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(not failures, f"{conc['clients']} concurrent clients got their own images ({failures[:3]})")

# One request larger than the model's max batch (8) is split and comes back whole, in order.
for protocol in ["http", "grpc"]:
    got = infer(protocol, conc["model"], cm, cz[:20], None if clabels is None else clabels[:20])
    check(close(got, cwant[:20], 1e-5), f"{protocol}: a 20-image request over max batch 8 comes back whole and in order")

with urllib.request.urlopen(f"http://{HTTP}/metrics") as r:
    metrics = r.read().decode()


def metric(family, model):
    """The family's value summed over the model's versions."""
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith(f'{family}{{model="{model}",')]
    return sum(values) if values else None


count, execs = metric("gantry_inference_count", conc["model"]), metric("gantry_inference_exec_count", conc["model"])
# The 20-image requests ran in executions of at most the max batch, and some of exactly it.
largest = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
           if line.startswith(f'gantry_inference_max_batch_size{{model="{conc["model"]}",')]
check(largest and max(largest) == 8, f"no execution ran more than the max batch of 8: {largest}")
check(count and execs and count / execs > 1.5, f"requests were merged: {count:.0f} images in {execs:.0f} executions")
check(metric("gantry_inference_request_failure", name) >= 3, "failures are counted")
check('gantry_execution_provider{model="' in metrics and 'provider="CPUExecutionProvider"} 1' in metrics, "the provider is exported")

# -- PNG endpoints (saved for the Rust side to compare with `runtime generate`) --------------
for q, file in manifest.get("pngs", []):
    with urllib.request.urlopen(f"http://{HTTP}{q}") as r:
        check(r.headers["Content-Type"] == "image/png", f"{q} is a PNG")
        open(os.path.join(base, file), "wb").write(r.read())
try:
    urllib.request.urlopen(f"http://{HTTP}/v2/models/{name}/generate?n=100000")
    check(False, "n over the limit")
except urllib.error.HTTPError as e:
    check(e.code == 400 and "limit" in json.loads(e.read())["error"], "generate: n over the limit -> 400")
try:
    urllib.request.urlopen(f"http://{HTTP}/v2/models/{name}/generate?seed=minus")
    check(False, "a bad seed")
except urllib.error.HTTPError as e:
    check(e.code == 400 and "seed" in json.loads(e.read())["error"], "generate: a bad seed -> 400 naming it")
print("ALL OK")
