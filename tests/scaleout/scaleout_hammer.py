"""One process of the lost-update test: ``python scaleout_hammer.py URL RUN MEMBER REPORTS INCREMENTS START_AT``.

Reports steps 1..REPORTS of its own member, one transaction per report (the worst case), and
in between adds 1 to a shared counter member INCREMENTS times by compare-and-set, retrying
when another process wrote first. Prints one JSON line with how many attempts it lost.
"""

from __future__ import annotations

import json
import sys
import time

from pbtune.store import SQLStore

COUNTER = 10_000  # member id of the shared counter


def main() -> None:
    url, run, member, reports, increments, start_at = sys.argv[1:7]
    store = SQLStore(url)
    time.sleep(max(0.0, float(start_at) - time.time()))  # every process starts together
    member_id, total, lost = int(member), int(reports), 0
    every = max(1, total // max(1, int(increments)))
    done = 0
    for step in range(1, total + 1):
        store.report(run, member_id, step, float(step), metrics={"by": member_id})
        if step % every == 0 and done < int(increments):
            while True:  # read, add one, write back unless someone else wrote first
                current = store.get_member(run, COUNTER)
                new = {"n": int(current.hparams["n"]) + 1}
                if store.set_hparams(run, COUNTER, new, expected_version=current.version, kind="count") is not None:
                    break
                lost += 1
            done += 1
    store.close()
    print(json.dumps({"member": member_id, "lost_cas": lost, "increments": done}))


if __name__ == "__main__":
    main()
