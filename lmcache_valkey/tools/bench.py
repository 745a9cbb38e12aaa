"""`lmcache-valkey bench`: ours against the ceiling and the peers, side by side.

For each value size, every client runs SET, GET and EXISTS once per round,
and rounds repeat; the client order rotates each round so none always runs
first. Everyone shares the same server, keys, values and destination buffers:
the destinations are allocated once and pre-touched, so page faults are not
measured for anyone; they are overwritten with zeros before each GET and
compared with the stored values after it, so a client that did not deliver
every byte fails the run instead of looking fast.

Figures are medians over rounds: GB/s, batch latency p50/p99, and client CPU
seconds per GB moved (process CPU time, so all of a client's threads count).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .bench_peers import BenchClient, all_peers

OPS = ("SET", "GET", "EXISTS")


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)


@dataclass
class Figures:
    client: str
    op: str
    sweep_bytes: int          # the value size of the sweep point this was measured at
    value_bytes: int          # bytes per key moved by this op (0 for EXISTS)
    keys: int
    rounds: int
    gbps: float               # median
    ops_per_s: float          # median
    p50_ms: float
    p99_ms: float
    cpu_s_per_gb: float | None


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figures(client: str, op: str, s: Samples, sweep_bytes: int, value_bytes: int,
             keys: int) -> Figures:
    moved = keys * value_bytes
    median = statistics.median(s.seconds)
    cpu = statistics.median(c / moved * 1e9 for c in s.cpu_seconds) if moved else None
    return Figures(client=client, op=op, sweep_bytes=sweep_bytes, value_bytes=value_bytes,
                   keys=keys,
                   rounds=len(s.seconds), gbps=moved / median / 1e9 if moved else 0.0,
                   ops_per_s=keys / median, p50_ms=median * 1e3,
                   p99_ms=_percentile(s.seconds, 0.99) * 1e3, cpu_s_per_gb=cpu)


# -- the server and the clients ---------------------------------------------

@contextlib.contextmanager
def _server(url: str | None, kind: str | None = None, io_threads: int = 1,
            stock_malloc: bool = False
            ) -> Iterator[tuple[str | None, int | None, str | None, str]]:
    """(host, port, unix_path, description) of the server to measure: `url`,
    or one started from `kind` (embedded.SERVER_KINDS), or the embedded one
    (keeping freed memory unless `stock_malloc`: server/allocator.py)."""
    from ..config import ClientConfig

    if kind is not None and url:
        raise ValueError("give --url or --server, not both")
    config = ClientConfig.from_options(url)
    if kind is None:
        if config.cluster or config.tls:  # our client takes the URL itself
            yield config.host, config.port, None, config.redacted_url()
            return
        if not config.embedded:
            yield config.host, config.port, config.unix_path, config.endpoint
            return
    from ..server.embedded import EmbeddedValkey, server_binary

    binary = server_binary(kind) if kind else None
    with EmbeddedValkey(unix_socket=True, binary=binary, keep_freed_memory=not stock_malloc,
                        config={"io-threads": str(io_threads)}) as server:
        malloc = "stock malloc" if stock_malloc else "malloc keeps freed memory"
        yield server.host, server.port, server.unix_path, \
            f"{kind or 'embedded'} (io-threads {io_threads}, {malloc})"


def _open_clients(names: list[str] | None, host: str | None, port: int | None,
                  unix_path: str | None, num_connections: int,
                  log: Any) -> list[BenchClient]:
    """Every requested client that can run here; say why the others can't.
    With both TCP and a unix socket, each client also runs over the socket
    under the name NAME@unix."""
    routes = ([("", host, port, None)] if host else []) + \
        ([("@unix" if host else "", None, None, unix_path)] if unix_path else [])
    known = [cls.name + suffix for cls in all_peers() for suffix, *_ in routes]
    unknown = set(names or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown client(s) {sorted(unknown)}; known here: {known}")
    clients: list[BenchClient] = []
    for cls in all_peers():
        for suffix, h, p, u in routes:
            name = cls.name + suffix
            if names and name not in names:
                continue
            reason = cls.unavailable_reason()
            if reason is None:
                try:
                    client = cls(h, p, u, num_connections)
                except (RuntimeError, OSError) as e:
                    reason = str(e)
                else:
                    client.name = name
                    clients.append(client)
                    continue
            log(f"  skipping {name}: {reason}")
    return clients


def _open_url_clients(names: list[str] | None, url: str, num_connections: int,
                      log: Any) -> list[BenchClient]:
    """Against a cluster or over TLS only our client runs (the peers'
    cluster and TLS set-ups differ by product); the others are skipped with
    a note. `examples/tls/bench_tls.py` compares TLS peers."""
    from .bench_peers import Ours

    known = [cls.name for cls in all_peers()]
    unknown = set(names or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown client(s) {sorted(unknown)}; known here: {known}")
    for name in names or known:
        if name != Ours.name:
            log(f"  skipping {name}: cluster and TLS URLs are measured with ours only")
    if names and Ours.name not in names:
        return []
    return [Ours(None, None, None, num_connections, url=url)]


def _cluster_spread(client: BenchClient, keys: int, value_sizes: list[int]) -> dict[str, Any]:
    """Keys and bytes each primary got, per value size (the bench's key names)."""
    cluster = client._client  # type: ignore[attr-defined]
    names = [f"lmcache-valkey-bench:{os.getpid()}:{i}".encode() for i in range(keys)]
    per_node: dict[str, int] = {}
    for name in names:
        node = cluster.node_of(name)
        per_node[node] = per_node.get(node, 0) + 1
    return {node: {"keys": n, "bytes": {str(v): n * v for v in value_sizes}}
            for node, n in sorted(per_node.items())}


# -- measuring ----------------------------------------------------------------

def _timed(samples: dict[tuple[str, str], Samples], client: str, op: str, fn: Any,
           *args: Any) -> Any:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args)
    t1, c1 = time.perf_counter(), time.process_time()
    s = samples.setdefault((client, op), Samples())
    s.seconds.append(t1 - t0)
    s.cpu_seconds.append(c1 - c0)
    return out


def values_and_dests(keys: int, value_bytes: int, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """`keys` random uint8 arrays of `value_bytes` (from `seed`), and as many
    destinations for reading them back into, pre-faulted."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = [rng.integers(0, 256, value_bytes, dtype=np.uint8) for _ in range(keys)]
    dests = [np.ones(value_bytes, np.uint8) for _ in range(keys)]
    return values, dests


def _measure_size(clients: list[BenchClient], value_bytes: int, keys: int, exists_keys: int,
                  rounds: int, warmup: int, progress: Any) -> list[Figures]:
    import numpy as np

    names = [f"lmcache-valkey-bench:{os.getpid()}:{i}".encode() for i in range(keys)]
    probe = [f"lmcache-valkey-bench:{os.getpid()}:{i}".encode() for i in range(exists_keys)]
    sources, dests = values_and_dests(keys, value_bytes, seed=value_bytes)  # dests shared
    samples: dict[tuple[str, str], Samples] = {}
    for r in range(warmup + rounds):
        record = samples if r >= warmup else {}
        shift = r % len(clients)
        for client in clients[shift:] + clients[:shift]:
            _timed(record, client.name, "SET", client.set, names, sources)
            for d in dests:
                d.fill(0)
            _timed(record, client.name, "GET", client.get, names, dests)
            for i, (src, dst) in enumerate(zip(sources, dests, strict=True)):
                if not np.array_equal(src, dst):
                    raise RuntimeError(f"{client.name}: GET of key {i} returned different bytes")
            present = _timed(record, client.name, "EXISTS", client.exists, probe)
            if present != min(keys, exists_keys):
                raise RuntimeError(f"{client.name}: EXISTS counted {present}, "
                                   f"expected {min(keys, exists_keys)}")
        progress(_round_bytes(len(clients), keys, value_bytes), value_bytes)
    out = []
    for client in clients:
        for op in OPS:
            n = exists_keys if op == "EXISTS" else keys
            size = 0 if op == "EXISTS" else value_bytes
            out.append(_figures(client.name, op, samples[(client.name, op)], value_bytes, size, n))
    return out


def run_bench(url: str | None, *, value_sizes: list[int], keys: int, exists_keys: int,
              rounds: int, warmup: int, num_connections: int,
              clients: list[str] | None = None, show_progress: bool = True,
              server: str | None = None, io_threads: int = 1,
              stock_malloc: bool = False) -> dict[str, Any]:
    log = (lambda msg: print(msg, file=sys.stderr)) if show_progress else (lambda msg: None)
    from ..config import ClientConfig

    config = ClientConfig.from_options(url)
    direct_url = url if config.cluster or config.tls else None
    cluster_url = url if config.cluster else None
    spread: dict[str, Any] = {}
    with _server(url, server, io_threads, stock_malloc) as (host, port, unix_path, where):
        # Our client first: an unreachable server is one clear error naming it.
        version = _server_version(host, port, unix_path, direct_url)
        if direct_url:
            opened = _open_url_clients(clients, direct_url, num_connections, log)
        else:
            opened = _open_clients(clients, host, port, unix_path, num_connections, log)
        if not opened:
            raise RuntimeError("no client to measure")
        try:
            figures: list[Figures] = []
            total = sum(_round_bytes(len(opened), keys, size) for size in value_sizes)
            with _progress_bar(total * (warmup + rounds), show_progress) as tick:
                for size in value_sizes:
                    figures += _measure_size(opened, size, keys, exists_keys, rounds, warmup, tick)
            if cluster_url:
                spread = _cluster_spread(opened[0], keys, value_sizes)
        finally:
            for c in opened:
                c.close()
    return {
        "command": "lmcache-valkey " + " ".join(sys.argv[1:]) if sys.argv else "",
        "server": f"{where}: {version}",
        "machine": _machine(),
        "num_connections": num_connections,
        "clients": [c.name for c in opened],
        "verified": True,
        "results": [asdict(f) for f in figures],
        **({"cluster_spread": spread} if cluster_url else {}),
    }


def _round_bytes(clients: int, keys: int, value_bytes: int) -> int:
    """Value bytes one round moves: every client SETs and GETs every key."""
    return 2 * clients * keys * value_bytes


@contextlib.contextmanager
def _progress_bar(total_bytes: int, enabled: bool) -> Iterator[Any]:
    """Progress in value bytes moved, so the ETA is remaining bytes / recent rate.

    Counted in rounds it was wrong by minutes: the default sweep's 32 MiB
    rounds move 512 times the bytes of its 64 KiB ones and take about that much
    longer, so the rate of the first (small) rounds promised an early end.
    """
    if not enabled:
        yield lambda nbytes, value_bytes: None
        return
    try:
        from tqdm import tqdm
    except ImportError:  # plain fallback: one line per round
        done = [0]

        def tick(nbytes: int, value_bytes: int) -> None:
            done[0] += nbytes
            print(f"  {_human(value_bytes)} round done: {done[0] / total_bytes:.0%} of the "
                  f"bytes", file=sys.stderr)

        yield tick
        return
    with tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, leave=False) as bar:

        def update(nbytes: int, value_bytes: int) -> None:
            bar.set_description(f"{_human(value_bytes)} rounds", refresh=False)
            bar.update(nbytes)

        yield update


def _server_version(host: str | None, port: int | None, unix_path: str | None,
                    direct_url: str | None = None) -> str:
    """What the server says it is ("redis 7.0.15"), and the GET depth ours
    chose for it (server_profile.py)."""
    from ..client.factory import open_client
    from ..protocol.server_profile import parse_info_server

    url = direct_url or (f"unix://{unix_path}" if unix_path and not host
                          else f"valkey://{host}:{port}")
    with open_client(url, num_connections=1) as c:
        info = c.execute("INFO", "server").decode(errors="replace")
    profile = parse_info_server(info)
    return f"{profile}; ours: {profile.inflight_bytes() >> 10} KiB of GET replies in flight " \
           f"per connection"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


# -- reporting ----------------------------------------------------------------

def format_table(report: dict[str, Any]) -> str:
    """One block per (value size, op), one row per client; `ours/this` is the
    ops/s ratio against ours over the same transport (TCP or @unix)."""
    rows = report["results"]
    order = {name: i for i, name in enumerate(report["clients"])}
    lines = [f"server: {report['server']}   connections: {report['num_connections']}   "
             f"bytes verified: {report['verified']}",
             f"machine: {report['machine']}"]
    by_cell = {(r["client"], r["op"], r["sweep_bytes"]): r for r in rows}
    blocks: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault((r["sweep_bytes"], OPS.index(r["op"]), r["op"]), []).append(r)
    spread = report.get("cluster_spread")
    if spread:
        total = sum(v["keys"] for v in spread.values()) or 1
        lines.append("cluster spread (keys per primary): " + ", ".join(
            f"{node} {v['keys']} ({100 * v['keys'] / total:.0f}%)"
            for node, v in spread.items()))
    for (_, _, op), block in sorted(blocks.items()):
        lines += ["", f"{'size':>9} {'op':<6} {'client':<16} {'GB/s':>7} {'ops/s':>9} "
                      f"{'p50 ms':>8} {'p99 ms':>8} {'CPU s/GB':>9} {'ours/this':>9}"]
        for r in sorted(block, key=lambda r: order[r["client"]]):
            suffix = "@unix" if r["client"].endswith("@unix") else ""
            base = by_cell.get(("ours" + suffix, op, r["sweep_bytes"]))
            ratio = f"{base['ops_per_s'] / r['ops_per_s']:.2f}x" \
                if base and base is not r else "-"
            size = _human(r["value_bytes"]) if r["value_bytes"] else f"{r['keys']} keys"
            gbps = f"{r['gbps']:.2f}" if r["value_bytes"] else "-"
            cpu = f"{r['cpu_s_per_gb']:.3f}" if r["cpu_s_per_gb"] is not None else "-"
            lines.append(f"{size:>9} {op:<6} {r['client']:<16} {gbps:>7} "
                         f"{r['ops_per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                         f"{cpu:>9} {ratio:>9}")
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files (Agg), for --plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def plot(report: dict[str, Any], path: str) -> None:
    """GB/s against value size, one line per client, one panel per op."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, op in zip(axes, ("GET", "SET"), strict=True):
        rows = [r for r in report["results"] if r["op"] == op]
        for client in dict.fromkeys(r["client"] for r in rows):
            pts = sorted((r["sweep_bytes"], r["gbps"]) for r in rows if r["client"] == client)
            style = "-o" if client.startswith("ours") else "--."
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=client)
        ax.set_xscale("log", base=2)
        ax.set_xticks([p for p in sorted({r["value_bytes"] for r in rows})])
        ax.set_xticklabels([_human(p) for p in sorted({r["value_bytes"] for r in rows})],
                           rotation=30)
        ax.set_title(f"{op}: {rows[0]['keys']} keys per batch")
        ax.set_xlabel("value size")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("GB/s (median)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{report['server']} — {report['machine']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def example_parser(doc: str, *, url: bool = False, value_size: str | None = None,
                   keys: int | None = None, rounds: int | None = None,
                   num_connections: int | None = None) -> argparse.ArgumentParser:
    """The parser of an example benchmark: the first paragraph of its `doc`
    as the description, and the options it shares with the others, each
    with the default given here (None: not an option of this bench)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if url:
        p.add_argument("--url", help="server URL (default: an embedded valkey-server)")
    if value_size is not None:
        p.add_argument("--value-size", type=parse_size, default=parse_size(value_size))
    for flag, default in (("--keys", keys), ("--rounds", rounds),
                          ("--num-connections", num_connections)):
        if default is not None:
            p.add_argument(flag, type=int, default=default)
    return p


def parse_size(text: str) -> int:
    """'4MiB', '512k', '1048576' -> bytes."""
    t = text.strip().lower().replace(" ", "")
    for suffix, mult in (("gib", 1 << 30), ("mib", 1 << 20), ("kib", 1 << 10),
                         ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10), ("b", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def main(args: Any) -> int:
    report = run_bench(args.url, value_sizes=args.value_sizes, keys=args.keys,
                       exists_keys=args.exists_keys, rounds=args.rounds, warmup=args.warmup,
                       num_connections=args.num_connections, clients=args.clients,
                       show_progress=not args.quiet, server=args.server,
                       io_threads=args.io_threads, stock_malloc=args.stock_malloc)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    if args.plot:
        plot(report, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
