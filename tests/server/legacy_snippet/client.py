"""An older project's client script, unchanged but for the import: it never calls finish().

"Training" is a deterministic toy: the weight moves towards 1 at a rate set by ``lr``; the
score is the negative distance, so a larger lr wins and exploits copy it.
"""

import json
import os
import sys

from pbtune.server import PBTClient

port, auth_key = int(sys.argv[1]), sys.argv[2]
client = PBTClient("127.0.0.1", port, auth_key, "space.csv")
weight = 0.0
ckpt_path = f"ckpt-{os.getpid()}.json"
for _epoch in range(8):
    lr = client.hyperparameters()["lr"]
    weight += lr * (1.0 - weight)
    with open(ckpt_path, "w") as f:
        json.dump({"weight": weight}, f)
    client.save(ckpt_path, -abs(1.0 - weight))
    if client.should_exploit():
        if client.exploit() is not None:
            with open(client.parameters_path()) as f:
                weight = json.load(f)["weight"]
            client.explore()
