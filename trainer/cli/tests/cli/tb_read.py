"""Reads a run's TensorBoard event files with TensorBoard's own reader (EventAccumulator) and
prints what it loaded as JSON: {"scalars": {tag: [[step, value], ...]},
"images": {tag: [[step, width, height, base64 PNG], ...]}}. The Rust test asserts on it."""
import base64
import json
import sys

from tensorboard.backend.event_processing import event_accumulator

acc = event_accumulator.EventAccumulator(
    sys.argv[1],
    size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0},
)
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {
        t: [
            [e.step, e.width, e.height, base64.b64encode(e.encoded_image_string).decode()]
            for e in acc.Images(t)
        ]
        for t in tags["images"]
    },
}
print(json.dumps(out))
