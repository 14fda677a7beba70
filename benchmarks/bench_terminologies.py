"""Benchmark of cimcoder.terminologies: load times and search latency.

    .venv/bin/python benchmarks/bench_terminologies.py [--repeat 3]

Each load is timed in a fresh Python process (so `functools.cache` does not hide it):
"first" with an empty on-disk cache (parse + build + index), "cached" with the pickle the
first run wrote. Search latency is the median over a fixed set of clinical queries, after
one warm-up pass, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

QUERIES = (
    "insuffisance cardiaque gauche",
    "HTA",
    "BPCO exacerbation",
    "diabete type 2 insuline",
    "embolie pulmonaire",
    "pneumopathie a pneumocoque",
    "fibrillation auriculaire paroxystique",
    "AVC ischemique",
    "insuffisance renale chronique stade 4",
    "fracture col du femur",
    "cancer du sein",
    "sepsis",
    "AEG",
    "chute domicile",
    "infection urinaire",
    "denutrition severe",
)


def _child(kind: str) -> None:
    start = time.perf_counter()
    if kind == "cim10":
        from cimcoder.terminologies import load_cim10

        load_cim10()
    elif kind == "cim11":
        from cimcoder.terminologies.cim11 import load_cim11

        load_cim11()
    else:
        from cimcoder.terminologies.crosswalk import load_crosswalk

        load_crosswalk()
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _time_load(kind: str, cache_dir: str) -> float:
    env = dict(os.environ, CIMCODER_CACHE_DIR=cache_dir)
    env.pop("CIMCODER_NO_CACHE", None)
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help="cached loads to time (median)")
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return

    print("load times (fresh process each; crosswalk includes loading both terminologies)")
    for kind in ("cim10", "cim11", "crosswalk"):
        with tempfile.TemporaryDirectory() as cache_dir:
            if kind == "crosswalk":  # time the crosswalk's own first build on cached terminologies
                _time_load("cim10", cache_dir)
                _time_load("cim11", cache_dir)
            first = _time_load(kind, cache_dir)
            cached = statistics.median(_time_load(kind, cache_dir) for _ in range(args.repeat))
        print(
            f"  {kind:<10} first load {first:6.2f} s   cached load {cached:6.2f} s (median of {args.repeat})"
        )

    from cimcoder.terminologies import load_cim10
    from cimcoder.terminologies.cim11 import load_cim11
    from cimcoder.terminologies.crosswalk import load_crosswalk

    print(f"search latency (median over {len(QUERIES)} queries, limit 10, after one warm-up pass)")
    for terminology in (load_cim10(), load_cim11()):
        for query in QUERIES:
            terminology.search(query, limit=10)
        latencies = []
        for query in QUERIES:
            start = time.perf_counter()
            terminology.search(query, limit=10)
            latencies.append(time.perf_counter() - start)
        print(
            f"  {terminology.edition:<26} median {statistics.median(latencies) * 1000:6.2f} ms"
            f"   max {max(latencies) * 1000:6.2f} ms"
        )
    crosswalk = load_crosswalk()
    codes = list(crosswalk.cim10.codes())[::50]
    start = time.perf_counter()
    for code in codes:
        crosswalk.to_cim11(code)
    per_code = (time.perf_counter() - start) / len(codes)
    print(f"crosswalk to_cim11: {per_code * 1e6:.1f} µs per code over {len(codes)} codes")
    stats = crosswalk.stats()
    print(
        f"crosswalk coverage: {stats['cim10_coverage']:.1%} of {stats['cim10_codes']} CIM-10 FR codes get a CIM-11 target"
        f" ({stats['cim10_mapped_direct']} direct, {stats['cim10_mapped_via_parent']} via WHO parent);"
        f" {stats['cim11_coverage']:.1%} of {stats['cim11_stem_codes']} CIM-11 stem codes get a CIM-10 target"
    )


if __name__ == "__main__":
    main()
