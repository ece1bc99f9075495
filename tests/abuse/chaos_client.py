"""A training-script stand-in for the chaos test: it resumes where its member is, saves every
step, exploits and explores, and logs each acknowledged report (fsynced) before going on.

Usage: python chaos_client.py URL KEY_FILE SPACE_CSV STEPS OUT
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from pbtune.server.client import PBTClient


def main() -> None:
    url, key_file, space, steps_text, out = sys.argv[1:6]
    with open(key_file, encoding="utf-8") as handle:
        key = handle.read().strip()
    client = PBTClient(url, None, key, space, identity_file=f"{out}.identity", cache_dir=f"{out}.cache",
                       retry_seconds=90)
    weights = f"{out}.weights.txt"
    with open(f"{out}.jsonl", "a", encoding="utf-8") as log:
        while client.step < int(steps_text):
            step = client.step + 1
            metric = round(-abs(math.log10(client.hparams["lr"]) + 2.0) + 0.01 * step, 9)
            with open(weights, "w", encoding="utf-8") as handle:
                handle.write(f"member {client.member_id} step {step}")
            client.save(weights, metric, step=step)
            log.write(json.dumps([client.member_id, step, metric]) + "\n")
            log.flush()
            os.fsync(log.fileno())
            if client.should_exploit() and client.exploit() is not None:
                path = client.parameters_path()
                assert path is not None and open(path, encoding="utf-8").read().startswith("member ")
                client.explore()
            time.sleep(0.02)
    client.finish()
    client.close()


if __name__ == "__main__":
    main()
