"""Sends one inference request with tritonclient.grpc and checks the gRPC status it gets.

  grpc_status_check.py GRPC_ADDRESS MODEL EXPECTED_STATUS    e.g. DEADLINE_EXCEEDED

Prints ALL OK when the request failed with EXPECTED_STATUS; exits non-zero otherwise.
"""
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

address, model, expected = sys.argv[1:4]
client = grpcclient.InferenceServerClient(address)
meta = client.get_model_metadata(model)
latent = meta.inputs[0]
z = np.zeros([1] + [int(d) for d in latent.shape[1:]], np.float32)  # 2-D or [N, nz, 1, 1] latents
inp = grpcclient.InferInput(latent.name, list(z.shape), "FP32")
inp.set_data_from_numpy(z)
try:
    client.infer(model, [inp])
    print(f"FAIL no error, expected {expected}")
    sys.exit(1)
except InferenceServerException as e:
    status = str(e.status())
    print(f"got {status}: {e.message()}")
    if not status.endswith(expected):
        print(f"FAIL expected {expected}")
        sys.exit(1)
print("ALL OK")
