"""A training-script stand-in for the SIGKILL test: save, maybe exploit/explore, every step.

Usage: python server_kill_client.py URL KEY_FILE SPACE_CSV STEPS OUT_JSON
"""

from __future__ import annotations

import json
import math
import sys
import time

from pbtune.server.client import PBTClient


def main() -> None:
    url, key_file, space, steps_text, out = sys.argv[1:6]
    with open(key_file, encoding="utf-8") as handle:
        key = handle.read().strip()
    client = PBTClient(url, None, key, space, identity_file=f"{out}.identity", cache_dir=f"{out}.cache",
                       retry_seconds=60)
    reported: list[list[float]] = []
    exploits = 0
    weights = f"{out}.weights.txt"
    for step in range(1, int(steps_text) + 1):
        metric = round(-abs(math.log10(client.hparams["lr"]) + 2.0) + 0.01 * step, 9)
        with open(weights, "w", encoding="utf-8") as handle:
            handle.write(f"member {client.member_id} step {step}")
        client.save(weights, metric, step=step)
        reported.append([step, metric])
        if client.should_exploit() and client.exploit() is not None:
            path = client.parameters_path()
            assert path is not None and open(path, encoding="utf-8").read().startswith("member ")
            client.explore()
            exploits += 1
        time.sleep(0.02)
    client.finish()
    client.close()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"member_id": client.member_id, "reported": reported, "exploits": exploits}, handle)


if __name__ == "__main__":
    main()
