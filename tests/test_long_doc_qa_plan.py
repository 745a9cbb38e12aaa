"""examples/long_doc_qa/run.py: the query round's hit:miss plan and the output comparison.

The benchmark's figures are only as good as its workload: every warm-up
document must come back once, fresh documents must never have been sent
before (by any round), and every configuration must get the same documents
so that outputs can be compared with ``none``'s.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "examples" / "long_doc_qa" / "run.py"


@pytest.fixture(scope="module")
def ldq():
    spec = importlib.util.spec_from_file_location("long_doc_qa_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_without_a_ratio_the_query_round_repeats_the_warm_up(ldq):
    assert ldq.query_plan(3, None, 0) == [(0, True), (1, True), (2, True)]
    assert ldq.fresh_docs_per_round(3, None) == 0


def test_two_to_one_interleaves_two_repeated_with_one_fresh(ldq):
    assert ldq.query_plan(5, (2, 1), 0) == [
        (0, True), (1, True), (5, False),
        (2, True), (3, True), (6, False),
        (4, True), (7, False)]
    assert ldq.fresh_docs_per_round(5, (2, 1)) == 3


def test_every_round_has_fresh_documents_of_its_own(ldq):
    n, ratio = 8, (2, 1)
    per_round = ldq.fresh_docs_per_round(n, ratio)
    seen: set[int] = set(range(n))
    for r in range(3):
        plan = ldq.query_plan(n, ratio, r)
        assert sorted(d for d, rep in plan if rep) == list(range(n))
        fresh = [d for d, rep in plan if not rep]
        assert len(fresh) == per_round == 4
        assert not seen & set(fresh)
        seen |= set(fresh)
    # All of them exist among the documents run.py generates.
    assert max(seen) == n + 3 * per_round - 1


def test_hit_miss_ratio_parsing(ldq):
    assert ldq.parse_hit_miss("2:1") == (2, 1)
    assert ldq.parse_hit_miss("3:0") == (3, 0)
    for bad in ("2", "0:1", "2:-1", "a:b", "1:2:3"):
        with pytest.raises(argparse.ArgumentTypeError):
            ldq.parse_hit_miss(bad)
    args = ldq.parse_args(["--max-inflight-requests", "4", "--hit-miss-ratio", "2:1"])
    assert args.max_inflight_requests == 4 and args.hit_miss_ratio == (2, 1)
    assert ldq.parse_args(["--concurrency", "3"]).max_inflight_requests == 3  # old name


def test_compare_matches_answers_by_document(ldq):
    def res(doc, tokens, repeated=True, lp=(-1.0,)):
        return ldq.Result(doc=doc, ttft=0.1, latency=0.2, repeated=repeated,
                          text="".join(tokens), tokens=list(tokens), logprobs=list(lp))

    reference = [res(0, "ab"), res(1, "cd"), res(5, "ef", False)]
    # Another order (concurrency), same answers: identical.
    same = ldq.compare(reference, [res(5, "ef", False, (-1.00001,)), res(1, "cd"), res(0, "ab")])
    assert same["repeated"] is True and same["fresh"] is True
    assert same["max_logprob_diff"] == pytest.approx(1e-5)
    # A repeated document answered differently: reported for the repeated ones only.
    diff = ldq.compare(reference, [res(0, "ab"), res(1, "xx"), res(5, "ef", False)])
    assert diff["repeated"] is False and diff["fresh"] is True
    # No fresh documents in this run: None, not "identical".
    assert ldq.compare(reference, [res(0, "ab")])["fresh"] is None


def test_max_gap_counts_gaps_overlapping_the_window(ldq):
    r = ldq.Result(doc=0, ttft=0, latency=0, arrivals=[0.0, 0.1, 0.2, 5.0, 5.1])
    assert r.max_gap() == pytest.approx(4.8)
    assert r.max_gap(1.0, 2.0) == pytest.approx(4.8)   # the pause spans the window
    assert r.max_gap(5.05, 9.0) == pytest.approx(0.1)
