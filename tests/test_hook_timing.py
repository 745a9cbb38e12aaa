"""HookTimer: per-hook wall times, bounded, summarized and dumped for the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from lmcache_valkey.vllm.hook_timing import (
    DIR_ENV,
    HookTimer,
    load_dumps,
    percentile,
    summarize_ms,
)


def test_time_records_each_call_per_hook():
    timer = HookTimer("scheduler", dump_dir=None)
    for _ in range(3):
        with timer.time("build_connector_meta"):
            pass
    with timer.time("get_num_new_matched_tokens"):
        time.sleep(0.02)
    s = timer.summary()
    assert set(s) == {"build_connector_meta", "get_num_new_matched_tokens"}
    assert s["build_connector_meta"]["n"] == 3
    slow = s["get_num_new_matched_tokens"]
    assert slow["n"] == 1
    assert slow["p50_ms"] == slow["p99_ms"] == slow["max_ms"] >= 20.0


def test_cpu_time_is_kept_beside_wall_time(tmp_path):
    """A hook that sleeps (waits for an answer, a core, the GIL) shows wall time
    its thread did not run; one that computes shows both."""
    timer = HookTimer("scheduler", dump_dir=tmp_path)
    with timer.time("get_num_new_matched_tokens"):
        time.sleep(0.03)
    with timer.time("build_connector_meta"):
        t_end = time.thread_time() + 0.02
        while time.thread_time() < t_end:
            pass
    timer.record("update_connector_output", 0.004, cpu_seconds=0.001)
    cpu, wall = timer.cpu_ms(), timer.durations_ms()
    assert wall["get_num_new_matched_tokens"][0] >= 30 > 10 > cpu["get_num_new_matched_tokens"][0]
    assert cpu["build_connector_meta"][0] >= 20
    assert wall["build_connector_meta"][0] >= cpu["build_connector_meta"][0] * 0.9
    assert cpu["update_connector_output"] == [pytest.approx(1.0)]
    timer.dump()
    assert load_dumps(tmp_path, field="cpu_ms")["scheduler"]["update_connector_output"] == [1.0]
    with pytest.raises(ValueError, match="field must be one of"):
        load_dumps(tmp_path, field="p99")


def test_a_hook_that_raises_is_still_recorded():
    timer = HookTimer("worker", dump_dir=None)
    with pytest.raises(KeyError), timer.time("start_load_kv"):
        raise KeyError("boom")
    assert timer.summary()["start_load_kv"]["n"] == 1


def test_percentiles_are_nearest_rank():
    values = [float(i) for i in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert summarize_ms([3.0, 1.0, 2.0]) == {"n": 3, "p50_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0}
    assert summarize_ms([])["n"] == 0


def test_samples_are_bounded_to_the_most_recent():
    timer = HookTimer("worker", dump_dir=None, max_samples=5)
    for i in range(12):
        timer.record("wait_for_save", i / 1000)  # i ms
    assert timer.durations_ms()["wait_for_save"] == pytest.approx([7, 8, 9, 10, 11])
    assert timer.summary()["wait_for_save"]["max_ms"] == pytest.approx(11.0)
    with pytest.raises(ValueError):
        HookTimer("worker", max_samples=0)


def test_no_dump_without_a_directory(monkeypatch):
    monkeypatch.delenv(DIR_ENV, raising=False)
    timer = HookTimer("scheduler")
    timer.record("x", 0.001)
    assert timer.dump() is None
    assert timer.maybe_dump() is None


def test_dump_dir_from_the_environment_and_file_content(monkeypatch, tmp_path):
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "timings"))
    timer = HookTimer("scheduler")
    timer.record("get_num_new_matched_tokens", 0.0015)
    timer.record("get_num_new_matched_tokens", 0.0025)
    path = timer.dump()
    assert path == tmp_path / "timings" / f"scheduler-{os.getpid()}.json"
    doc = json.loads(path.read_text())
    assert doc["role"] == "scheduler" and doc["pid"] == os.getpid()
    assert doc["durations_ms"] == {"get_num_new_matched_tokens": [1.5, 2.5]}
    ends = doc["end_monotonic_s"]["get_num_new_matched_tokens"]
    assert len(ends) == 2 and ends[0] <= ends[1] <= time.monotonic()
    assert doc["summary"]["get_num_new_matched_tokens"] == {
        "n": 2, "p50_ms": 1.5, "p99_ms": 2.5, "max_ms": 2.5}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_dumps_at_interpreter_exit(tmp_path):
    """A process whose owner never calls dump() (no shutdown hook) still leaves its file."""
    code = ("from lmcache_valkey.vllm.hook_timing import HookTimer\n"
            "t = HookTimer('worker')\n"
            "t.record('wait_for_save', 0.004)\n")
    env = {**os.environ, DIR_ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
    assert load_dumps(tmp_path) == {"worker": {"wait_for_save": [4.0]}}


def test_maybe_dump_at_most_once_per_interval(tmp_path):
    timer = HookTimer("worker", dump_dir=tmp_path, dump_interval_s=0.2)
    timer.record("wait_for_save", 0.001)
    assert timer.maybe_dump() is None          # just created: the interval has not passed
    time.sleep(0.25)
    path = timer.maybe_dump()
    assert path is not None and path.exists()
    assert timer.maybe_dump() is None          # the dump restarted the interval


def test_load_dumps_pools_processes_of_a_role(tmp_path):
    a = HookTimer("worker", dump_dir=tmp_path)
    a.record("start_load_kv", 0.001)
    a.dump()
    # A second worker process (as with TP=2): its own file.
    doc = json.loads(a.dump_path().read_text())
    doc["pid"] += 1
    doc["durations_ms"] = {"start_load_kv": [4.0], "wait_for_save": [2.0]}
    (tmp_path / f"worker-{doc['pid']}.json").write_text(json.dumps(doc))
    s = HookTimer("scheduler", dump_dir=tmp_path)
    s.record("build_connector_meta", 0.0005)
    s.dump()
    pooled = load_dumps(tmp_path)
    assert sorted(pooled["worker"]["start_load_kv"]) == [1.0, 4.0]
    assert pooled["worker"]["wait_for_save"] == [2.0]
    assert pooled["scheduler"] == {"build_connector_meta": [0.5]}


def test_load_dumps_keeps_the_calls_of_a_time_window(tmp_path):
    timer = HookTimer("scheduler", dump_dir=tmp_path)
    timer.record("get_num_new_matched_tokens", 0.001)
    time.sleep(0.05)
    start = time.monotonic()
    time.sleep(0.01)
    timer.record("get_num_new_matched_tokens", 0.002)   # ended within the window
    time.sleep(0.01)
    end = time.monotonic()
    time.sleep(0.2)
    timer.record("get_num_new_matched_tokens", 0.003)   # after it
    # Started within the window, ended after it (a call that blocked through it).
    timer.record("get_num_new_matched_tokens", time.monotonic() - end + 0.01)
    timer.dump()
    got = load_dumps(tmp_path, window=(start, end))["scheduler"]["get_num_new_matched_tokens"]
    assert len(got) == 2 and got[0] == 2.0 and got[1] > 200
    assert len(load_dumps(tmp_path)["scheduler"]["get_num_new_matched_tokens"]) == 4


def test_concurrent_recording_and_summaries():
    timer = HookTimer("worker", dump_dir=None, max_samples=1000)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            with timer.time("wait_for_save"):
                pass

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            s = timer.summary()
            assert s.get("wait_for_save", {"n": 0})["n"] <= 1000
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert timer.summary()["wait_for_save"]["n"] == 1000
