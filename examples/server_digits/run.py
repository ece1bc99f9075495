"""1 pbtune server + 4 client processes training the digits MLP, on this machine.

    python examples/server_digits/run.py [--epochs 30] [--port 8765]

The server and clients could as well run on different machines: start the server with
``--host 0.0.0.0`` and point each client's ``--url`` at it. Results stay in the store:
``pbtune status pbt --storage sqlite:///<workdir>/pbt.db``, ``pbtune lineage ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_until_up(url: str, server: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
        if server.poll() is not None:
            raise SystemExit("the server exited; see its output above")
    raise SystemExit(f"the server did not come up at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="pbtune-server-digits-")
    os.makedirs(workdir, exist_ok=True)
    key_file = os.path.join(workdir, "key.txt")
    with open(key_file, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32))
    os.chmod(key_file, 0o600)
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([
        sys.executable, "-m", "pbtune.cli", "server", "--port", str(args.port), "--auth-key-file", key_file,
        "--storage", f"sqlite:///{workdir}/pbt.db", "--checkpoints", os.path.join(workdir, "checkpoints"),
        "--population", str(args.clients), "--ready-interval", "4", "--mode", "max",
    ])
    try:
        wait_until_up(url, server)
        clients = [
            subprocess.Popen([sys.executable, os.path.join(HERE, "client.py"), "--url", url, "--key-file", key_file,
                              "--epochs", str(args.epochs), "--workdir", workdir, "--name", f"client{i}"],
                             stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
            for i in range(args.clients)
        ]
        results = []
        for client in clients:
            output, _ = client.communicate()
            if client.returncode != 0:
                raise SystemExit(f"a client failed (exit {client.returncode})")
            results.append(json.loads(output.decode().strip().splitlines()[-1]))
        subprocess.run([sys.executable, "-m", "pbtune.cli", "server-status", url, "--auth-key-file", key_file],
                       check=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    best = max(results, key=lambda r: r["accuracy"])
    print(f"best member {best['member']}: validation accuracy {best['accuracy']:.4f} with {best['hparams']}")
    print(f"store: sqlite:///{workdir}/pbt.db  (pbtune lineage pbt best --storage sqlite:///{workdir}/pbt.db)")
    print(json.dumps({"best_member": best["member"], "best_accuracy": best["accuracy"], "workdir": workdir}))


if __name__ == "__main__":
    main()
