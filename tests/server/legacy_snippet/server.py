"""An older project's server script, unchanged but for the import (and the port from argv).

It constructs the server with three positional arguments and goes on (no serve() call):
the server must already be listening when the clients start.
"""

import subprocess
import sys

from pbtune.server import PBTServer

port, auth_key, maximize_metric = int(sys.argv[1]), "snippet-key-0123456789", True
server = PBTServer(port, auth_key, maximize_metric)

clients = [subprocess.Popen([sys.executable, sys.argv[2], str(port), auth_key]) for _ in range(4)]
codes = [client.wait(timeout=300) for client in clients]
print("clients exited with", codes)
server.stop()
sys.exit(max(codes))
