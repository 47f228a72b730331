"""Shared by the benchmark scripts: write one results section with machine, date, commit and command."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """CPU model and core count, e.g. 'Intel(R) Xeon(R) ... (2 cores), Linux x86_64'."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores), {platform.system()} {platform.machine()}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_section(name: str, title: str, body: str, argv: list[str], command: str | None = None) -> Path:
    """benchmarks/results/<name>.md: title, provenance line (``command`` or one made from argv), body."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = command or "python benchmarks/" + " ".join([Path(argv[0]).name, *argv[1:]])
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"## {title}\n\n_Machine: {machine()}; date: {stamp}; commit: {git_commit()}; "
            f"command: `{command}`_\n\n{body}\n")
    path = RESULTS / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    return path
