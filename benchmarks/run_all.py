"""Run every benchmark script present, then rebuild benchmarks/README.md from their section files.

    python benchmarks/run_all.py [--quick] [--only server_update,stragglers] [--assemble-only] [--no-ray]

``make bench`` runs this.  Scripts run one after another (never two at once:
they time things), each in its own process with a time limit; one that
fails or times out is reported and the others still run; the exit status is
1 if any failed.  Budget on a shared 2-core machine: under 30 minutes in
all, under 10 with ``--quick``.

Every script runs with ``OMP_NUM_THREADS=1`` (``--threads`` changes it; 0
keeps torch's default): on a small machine shared with other jobs, OpenMP
regions of 2 threads stall whenever one core is taken (a small MLP's
gradient went from a few ms to ~100 ms here), which would measure the
neighbours rather than the code.  A Ray actor runs with one thread anyway.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _readme import assemble  # noqa: E402
from _report import write_section  # noqa: E402

# (script, extra arguments in a full run, time limit in seconds)
SCRIPTS = [
    ("server_update", [], 600),
    ("stragglers", [], 600),
    ("scaling", [], 300),
    ("sim_overhead", ["--repeats", "5"], 600),
    ("data_path", [], 600),
    ("ray_transport", [], 600),
    ("peers", [], 900),
    ("fidelity", [], 1200),
]
RAY_SCRIPTS = {"ray_transport", "peers", "fidelity"}


def write_run_times(took_s: list[tuple[str, str, float]], total_s: float, args: argparse.Namespace) -> None:
    """benchmarks/results/make_bench.md: how long each script of a full ``make bench`` took."""
    rows = "\n".join(f"| {name} | {status} | {seconds:.0f} |" for name, status, seconds in took_s)
    body = (f"One full run of every benchmark, one after another (threads {args.threads}"
            f"{', no Ray' if args.no_ray else ''}); 1-min load average at the end {os.getloadavg()[0]:.1f}.\n\n"
            f"| script | status | seconds |\n|---|---|---:|\n{rows}\n\n"
            f"- total: **{total_s / 60:.1f} min** (budget: 30 min)")
    write_section("make_bench", "make bench: run times", body, [],
                  command="make bench" + (" (run_all.py --no-ray)" if args.no_ray else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", default="", help="comma-separated script names (default: all present)")
    parser.add_argument("--assemble-only", action="store_true", help="only rebuild README.md from results/*.md")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray: --no-ray to stragglers, skip ray_transport, "
                                                             "peers and fidelity")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every script (default 1; "
                                                               "0 = torch's default)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)
    failures: list[str] = []
    took_s: list[tuple[str, str, float]] = []          # (script, status, seconds)
    if not args.assemble_only:
        wanted = set(args.only.split(",")) if args.only else None
        start_all = time.perf_counter()
        for name, extra, limit in SCRIPTS:
            script = HERE / f"{name}.py"
            if (wanted and name not in wanted) or not script.exists():
                continue
            if args.no_ray and name in RAY_SCRIPTS:
                print(f"== {name}: skipped (--no-ray)", flush=True)
                continue
            cmd = [sys.executable, str(script), *extra, *(["--quick"] if args.quick else [])]
            if args.no_ray and name == "stragglers":
                cmd.append("--no-ray")
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            try:
                status = subprocess.run(cmd, timeout=limit, cwd=HERE.parent, env=env).returncode
            except subprocess.TimeoutExpired:
                status = f"timed out after {limit} s"
            took = time.perf_counter() - start
            took_s.append((name, "ok" if status == 0 else str(status), took))
            if status != 0:
                failures.append(f"{name} ({'exit status ' + str(status) if isinstance(status, int) else status})")
            print(f"== {name}: {'ok' if status == 0 else 'FAILED'} in {took:.0f} s "
                  f"({time.perf_counter() - start_all:.0f} s so far)", flush=True)
        if not wanted and not args.quick and took_s:
            write_run_times(took_s, time.perf_counter() - start_all, args)
    print(f"wrote {assemble()}")
    if failures:
        print("failed: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
