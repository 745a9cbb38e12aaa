"""A Valkey that keeps its data: ``lmcache-valkey server --data-dir`` and
``EmbeddedValkey(data_dir=...)`` with RDB snapshots or an append-only file,
stopped and started again from their files (real servers, real files).

vLLM across such a restart: tests/test_vllm_python_api.py.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_valkey import EmbeddedValkey
from lmcache_valkey.server.embedded import EmbeddedServerError, free_port
from lmcache_valkey.server.persistence import persistence_config
from lmcache_valkey.tools.cli import main as cli_main

OUTSIDE_CHECKOUT = Path(__file__).resolve().parent  # the installed package, not the source tree


def test_persistence_choices_and_their_directives() -> None:
    assert persistence_config("none") == {"save": '""', "appendonly": "no"}
    rdb = persistence_config("rdb")
    assert rdb["save"] == '"3600 1"' and rdb["appendonly"] == "no"
    assert rdb["shutdown-on-sigterm"] == "save"          # a snapshot at every stop
    assert rdb["stop-writes-on-bgsave-error"] == "no"    # a failed snapshot never stops writes
    assert rdb["rdbcompression"] == "no"                 # KV does not compress: CPU for nothing
    assert persistence_config("rdb", save="")["save"] == '""'
    aof = persistence_config("aof")
    assert (aof["appendonly"], aof["appendfsync"], aof["save"]) == ("yes", "everysec", '""')
    assert persistence_config("aof", appendfsync="always", save="900 1")["save"] == '"900 1"'
    for bad in ({"mode": "disk"}, {"mode": "aof", "appendfsync": "sometimes"},
                {"mode": "rdb", "save": "3600"}, {"mode": "rdb", "save": "x 1"},
                {"mode": "none", "save": "60 1"}):
        with pytest.raises(ValueError):
            persistence_config(bad.pop("mode"), **bad)


@pytest.mark.parametrize("mode", ["rdb", "aof"])
def test_data_and_ttls_survive_a_stop_and_start(mode, tmp_path, make_client) -> None:
    data = tmp_path / "data"
    server = EmbeddedValkey(data_dir=data, config=persistence_config(mode)).start()
    try:
        c = make_client(server.url, key_prefix="vllm:kv:", ttl_s=3600)
        values = [bytes([i]) * (100_000 + i) for i in range(20)]
        keys = [f"b{i}" for i in range(20)]
        assert all(c.batch_set(keys, values))
        server.stop()                                         # SIGTERM: final save / AOF fsync
        files = {p.name for p in data.rglob("*") if p.is_file()}
        assert ("dump.rdb" in files) if mode == "rdb" else any(".aof" in f for f in files)
        server.start()                                        # loads them
        dests = [bytearray(len(v)) for v in values]
        assert c.batch_get_into(keys, dests) == [len(v) for v in values]
        assert dests == values
        ttl = c.execute("PTTL", b"vllm:kv:b0")
        assert 3_500_000 < ttl <= 3_600_000                   # expiry times are kept
    finally:
        server.close()
    assert data.is_dir()                                      # close() leaves the data


def test_one_data_dir_serves_one_server_at_a_time(tmp_path) -> None:
    with EmbeddedValkey(data_dir=tmp_path, config=persistence_config("rdb")), \
            pytest.raises(EmbeddedServerError, match="in use by another server"):
        EmbeddedValkey(data_dir=tmp_path).start()
    EmbeddedValkey(data_dir=tmp_path).start().close()        # free again once stopped


@contextlib.contextmanager
def cli_server(port: int, data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """`lmcache-valkey server --data-dir` as an operator runs it; stopped
    (and, if need be, killed) at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "lmcache_valkey", "server", "--port",
                             str(port), "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=OUTSIDE_CHECKOUT)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith(f"valkey-server listening on valkey://127.0.0.1:{port}"), lines
        assert "rdb, save '3600 1' and at shutdown" in lines[1], lines
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_cli_server_keeps_its_data_across_a_restart(tmp_path, make_client) -> None:
    port = free_port()
    c = make_client(f"valkey://127.0.0.1:{port}", key_prefix="vllm:kv:",
                    reconnect_backoff_max_s=0.1)
    with cli_server(port, tmp_path / "valkey") as proc:
        assert c.batch_set(["a", "b"], [b"A" * 1000, b"B" * 2000]) == [True, True]
        proc.send_signal(signal.SIGINT)                       # Ctrl-C: stop, with a snapshot
        assert proc.wait(60) == 0
    assert (tmp_path / "valkey" / "dump.rdb").is_file()
    with cli_server(port, tmp_path / "valkey"):
        dests = [bytearray(1000), bytearray(2000)]
        assert c.batch_get_into(["a", "b"], dests) == [1000, 2000]
        assert dests == [b"A" * 1000, b"B" * 2000]


def test_cli_server_print_config_and_bad_options(tmp_path, capsys) -> None:
    assert cli_main(["server", "--data-dir", str(tmp_path), "--persistence", "aof",
                     "--appendfsync", "always", "--maxmemory", "8gb",
                     "--maxmemory-policy", "allkeys-lru", "--print-config"]) == 0
    conf = capsys.readouterr().out
    for line in (f"dir {tmp_path.resolve()}", "appendonly yes", "appendfsync always",
                 "maxmemory 8gb", "maxmemory-policy allkeys-lru",
                 "stop-writes-on-bgsave-error no"):
        assert line + "\n" in conf
    assert cli_main(["server", "--persistence", "rdb"]) == 1
    assert "--persistence rdb needs --data-dir" in capsys.readouterr().err
    assert cli_main(["server", "--data-dir", str(tmp_path), "--save", "soon"]) == 1
    assert "snapshot schedule must be pairs" in capsys.readouterr().err
