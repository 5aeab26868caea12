"""Drives a running `runtime serve` with KServe's own Python SDK (`kserve` from PyPI): its
InferenceRESTClient (JSON and binary tensors) and InferenceGRPCClient, and validates every REST
response body with KServe's own data models of the Open Inference Protocol (v2_datamodels).

  kserve_check.py MANIFEST.json          the manifest client_check.py reads
  kserve_check.py --drain HTTP GRPC PID  SIGTERMs PID (a server started with --drain-delay-ms)
                                         and checks that readiness answers not-ready while it drains

Prints one line per check and ALL OK at the end; exits non-zero on the first failure.
"""
import asyncio
import json
import os
import signal
import sys

import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest import v2_datamodels as v2


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def conforms(model, body, what):
    """The body parses as KServe's pydantic model of that response."""
    try:
        model.model_validate(body)
    except Exception as e:  # noqa: BLE001 - any validation error is the failure reported
        check(False, f"{what}: {body!r:.200} is not a {model.__name__}: {e}")
    check(True, f"{what} is a {model.__name__}")


def request(name, m, z, labels, binary, version=None):
    inputs = [InferInput(m["latent_input"], list(z.shape), "FP32")]
    inputs[0].set_data_from_numpy(z, binary_data=binary)
    if labels is not None:
        inputs.append(InferInput(m["label_input"], list(labels.shape), "INT64"))
        inputs[1].set_data_from_numpy(labels, binary_data=binary)
    outputs = [RequestedOutput(m["output"], parameters={"binary_data": binary})]
    return InferRequest(name, inputs, request_id=f"kserve-{name}", request_outputs=outputs,
                        model_version=version)


async def check_server(manifest, base):
    url = f"http://{manifest['http']}"
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    grpc = InferenceGRPCClient(manifest["grpc"], timeout=60)
    plain = httpx.AsyncClient(timeout=60)

    def load(file, dtype, shape):
        return np.fromfile(os.path.join(base, file), dtype=dtype).reshape(shape)

    # -- health, through the SDK and as the data models read the bodies -------------------------
    check(await rest.is_server_live(url) is True, "rest: server live")
    check(await rest.is_server_ready(url) is True, "rest: server ready")
    check(await grpc.is_server_live() is True, "grpc: server live")
    check(await grpc.is_server_ready() is True, "grpc: server ready")
    for path, model in [("/v2/health/live", v2.ServerLiveResponse), ("/v2/health/ready", v2.ServerReadyResponse),
                        ("/v2", v2.ServerMetadataResponse), ("/v2/", v2.ServerMetadataResponse)]:
        r = await plain.get(url + path)
        check(r.status_code == 200 and r.headers["content-type"] == "application/json", f"GET {path} -> {r.status_code} JSON")
        conforms(model, r.json(), f"GET {path}")
    meta = (await plain.get(url + "/v2")).json()
    gmeta = await grpc._client_stub.ServerMetadata(pb.ServerMetadataRequest())
    check(gmeta.name == meta["name"] == "gantry" and list(gmeta.extensions) == meta["extensions"],
          "grpc: server metadata equals REST's")

    # -- per model: readiness, metadata, inference against the library's images -----------------
    for name, m in manifest["models"].items():
        check(await rest.is_model_ready(url, name) is True, f"rest: {name} ready")
        check(await grpc.is_model_ready(name) is True, f"grpc: {name} ready")
        r = await plain.get(f"{url}/v2/models/{name}/ready")
        conforms(v2.ModelReadyResponse, r.json(), f"GET /v2/models/{name}/ready")
        check(r.json() == {"name": name, "ready": True}, f"{name}: ready body {r.json()}")
        md = (await plain.get(f"{url}/v2/models/{name}")).json()
        conforms(v2.ModelMetadataResponse, md, f"GET /v2/models/{name}")
        check(md["versions"] == m["versions"], f"{name}: versions {md['versions']}")
        gmd = await grpc._client_stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
        check([(t.name, t.datatype, list(t.shape)) for t in gmd.inputs]
              == [(t["name"], t["datatype"], t["shape"]) for t in md["inputs"]]
              and [(t.name, t.datatype, list(t.shape)) for t in gmd.outputs]
              == [(t["name"], t["datatype"], t["shape"]) for t in md["outputs"]],
              f"grpc: {name} metadata equals REST's")
        for v in m["versions"]:
            r = await plain.get(f"{url}/v2/models/{name}/versions/{v}/ready")
            check(r.status_code == 200 and r.json()["ready"] is True, f"{name} version {v} ready")

        z = load(m["latents"], np.float32, m["latents_shape"])
        labels = load(m["labels"], np.int64, [z.shape[0]]) if m.get("labels") else None
        want = load(m["expected"], m["dtype"], m["expected_shape"])
        for binary in [True, False]:
            res = await rest.infer(url, request(name, m, z, labels, binary), model_name=name)
            got = res.outputs[0].as_numpy()
            check(res.id == f"kserve-{name}" and got.dtype == want.dtype and np.array_equal(got, want),
                  f"rest ({'binary' if binary else 'JSON'}): {name} gives the library's images, tolerance 0")
        res = await grpc.infer(request(name, m, z, labels, True))
        got = res.outputs[0].as_numpy()
        check(got.dtype == want.dtype and np.array_equal(got, want),
              f"grpc: {name} gives the library's images, tolerance 0")
        for v in m["versions"]:
            one = request(name, m, z[:1], None if labels is None else labels[:1], True, version=v)
            res = await grpc.infer(one)
            check(np.array_equal(res.outputs[0].as_numpy(), want[:1]) and res.model_version == v,
                  f"grpc: {name} version {v} answers")
        # A JSON response as KServe's data model reads it.
        body = request(name, m, z[:1], None if labels is None else labels[:1], False).to_rest()[0]
        r = await plain.post(f"{url}/v2/models/{name}/infer", json=body)
        conforms(v2.InferenceResponse, r.json(), f"POST /v2/models/{name}/infer (JSON)")

    # -- errors as the SDK reports them ---------------------------------------------------------
    name, m = next((n, m) for n, m in manifest["models"].items() if not m.get("labels"))
    z = load(m["latents"], np.float32, m["latents_shape"])[:2]
    try:
        await rest.infer(url, request("no-such-model", m, z, None, True), model_name="no-such-model")
        check(False, "rest: unknown model refused")
    except httpx.HTTPStatusError as e:
        check(e.response.status_code == 404 and "no-such-model" in str(e), f"rest: unknown model -> {str(e)[:100]}")
    check(await rest.is_model_ready(url, "no-such-model") is False, "rest: unknown model is not ready")
    try:
        await rest.infer(url, request(name, m, z[:, :-1].copy(), None, False), model_name=name)
        check(False, "rest: wrong latent size refused")
    except httpx.HTTPStatusError as e:
        check(e.response.status_code == 400 and "error" in e.response.json(), f"rest: wrong latent size -> {str(e)[:100]}")
    await rest.close()
    await grpc.close()
    await plain.aclose()


async def check_drain(http, grpc_addr, pid):
    url = f"http://{http}"
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
    grpc = InferenceGRPCClient(grpc_addr, timeout=10, retries=0)
    check(await rest.is_server_ready(url) is True and await grpc.is_server_ready() is True, "ready before SIGTERM")
    os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(0.3)
    try:
        ready = await rest.is_server_ready(url)
        check(False, f"rest: readiness while draining answered {ready} with a 2xx")
    except httpx.HTTPStatusError as e:
        check(e.response.status_code == 503 and e.response.json() == {"ready": False},
              f"rest: draining -> {e.response.status_code} {e.response.json()}")
    check(await grpc.is_server_ready() is False, "grpc: draining -> ready: false")
    check(await rest.is_server_live(url) is True and await grpc.is_server_live() is True, "still live while draining")
    r = httpx.get(url + "/v2/models")
    check(r.status_code == 404 and "error" in r.json(), "still answering requests while draining")
    await rest.close()
    await grpc.close()


if sys.argv[1] == "--drain":
    asyncio.run(check_drain(sys.argv[2], sys.argv[3], int(sys.argv[4])))
else:
    manifest = json.load(open(sys.argv[1]))
    asyncio.run(check_server(manifest, os.path.dirname(os.path.abspath(sys.argv[1]))))
print("ALL OK")
