"""Every bad input we know of, run through the CLI: its error line, exit status and what it leaves on disk.

    python scripts/bad_input_table.py            # print the table
    python scripts/bad_input_table.py --write    # rewrite docs/bad-input.md and README.md's exit-status table

Each case runs ``python -m dcasgd ...`` in a fresh temporary directory and
records the first line it printed on stderr, the exit status and whether it
left anything behind (a new ``--out`` directory, or any change to the files
the case prepared).  ``tests/test_bad_input_table.py`` runs the same cases
and asserts: exit status 2, exactly one ``dcasgd: error:`` line naming the
problem, nothing left behind.  So the table in ``docs/bad-input.md`` is what
the command printed, not typed by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bad-input.md"
SYNTH = ["--dataset", "synthetic"]


@dataclass(frozen=True)
class Case:
    what: str                          # the bad input, in words
    args: tuple[str, ...]              # CLI arguments; {tmp} is the case's directory, {out} its --out
    expect: str                        # a fragment the error line must contain
    files: dict[str, bytes] = field(default_factory=dict)   # files to prepare under {tmp} first
    out: bool = True                   # add --out {out} (train)


CASES = (
    Case("a negative `--seed`", ("train", *SYNTH, "--seed", "-1"), "seed must be an integer >= 0"),
    Case("a huge `--seed`", ("train", *SYNTH, "--seed", "99999999999"), "seed must be an integer in [0, 4294967295]"),
    Case("a non-string `out` in a TOML file", ("train", "--config", "{tmp}/bad.toml"), "out must be a string",
         files={"bad.toml": b'dataset = "synthetic"\nout = 5\n'}, out=False),
    Case("`--workers` beyond the training samples (empty shards)", ("train", *SYNTH, "--workers", "5000"),
         "shards would be empty"),
    Case("`--workers` whose backups cannot fit in memory", ("train", "--workers", "30000"), "the run needs about"),
    Case("a `--replay` file of random bytes", ("train", *SYNTH, "--replay", "{tmp}/trace.jsonl"), "replay trace",
         files={"trace.jsonl": bytes(range(256)) * 8}),
    Case("`compare --seeds ,`", ("compare", "{out}", *SYNTH, "--seeds", ","), "seeds list is empty", out=False),
    Case("`report` on a directory with no study", ("report", "{tmp}/empty"), "holds no study",
         files={"empty/notes.txt": b"not a study\n"}, out=False),
    Case("a mistyped choice (`--rule foo`)", ("train", "--rule", "foo"), "invalid choice: 'foo'"),
    Case("an unreachable `--address`", ("train", "--backend", "ray", *SYNTH, "--address", "127.0.0.1:1"),
         "cannot reach a Ray cluster at 127.0.0.1:1"),
    Case("a malformed `--address`", ("train", "--backend", "ray", *SYNTH, "--address", "10.0.0.1"),
         "is not a Ray cluster address"),
    Case("a negative lr milestone", ("train", *SYNTH, "--lr-schedule", "step", "--lr-milestones=-1,2"),
         "lr_milestones must be a finite number >= 0"),
    Case("a warm-up longer than the run", ("train", *SYNTH, "--epochs", "1", "--warmup-epochs", "5"),
         "longer than the run"),
    Case("an absurd straggler factor", ("train", *SYNTH, "--straggler", "0:1e9"), "straggler factor must be"),
    Case("a zero worker speed", ("train", *SYNTH, "--workers", "2", "--speeds", "1,0"), "speeds must be"),
    Case("a new run into a directory holding another run", ("train", *SYNTH), "holds another run's files",
         files={"out/summary.json": b"{}\n", "out/metrics.jsonl": b""}),
    Case("`--resume` of a directory without checkpoints", ("train", "--resume", "{tmp}/empty"),
         "no loadable checkpoint", files={"empty/notes.txt": b"no run here\n"}, out=False),
    Case("a `--config` file that is not UTF-8", ("train", "--config", "{tmp}/latin1.toml"), "not UTF-8 text",
         files={"latin1.toml": 'dataset = "synthetic"\n# caf\xe9\n'.encode("latin-1")}, out=False),
    Case("an `--out` below a file", ("train", *SYNTH, "--out", "{tmp}/a-file/run"), "cannot use",
         files={"a-file": b"not a directory\n"}, out=False),
    Case("`compare` whose grid makes a run invalid (a straggler beyond M)",
         ("compare", "{out}", *SYNTH, "--workers-grid", "1,2", "--straggler", "3:4"), "straggler: worker 3",
         out=False),
    Case("a TOML key set twice, as its flag's name and its own", ("train", "--config", "{tmp}/twice.toml"),
         "both straggler and stragglers", files={"twice.toml": b'straggler = ["1:2"]\nstragglers = {"1" = 3.0}\n'},
         out=False),
)


@dataclass
class Outcome:
    status: int
    stderr_lines: list[str]
    left_behind: str                  # "nothing" or what changed on disk


def tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(directory.rglob("*"))}


def run_case(case: Case, python: str = sys.executable) -> Outcome:
    """Run one case in a fresh temporary directory; report status, stderr and what it left behind."""
    with tempfile.TemporaryDirectory(prefix="dcasgd-bad-") as tmp_name:
        tmp = Path(tmp_name)
        for name, content in case.files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(content)
        out = tmp / "out"
        args = [a.format(tmp=tmp, out=out) for a in case.args] + (["--out", str(out), "--no-progress"]
                                                                    if case.out else [])
        before = tree(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([python, "-m", "dcasgd", *args], capture_output=True, text=True, timeout=300,
                                cwd=tmp, env=env)
        after = tree(tmp)
        changed = sorted(set(after) ^ set(before) | {k for k in after if k in before and after[k] != before[k]})
        lines = [line.replace(str(tmp), "TMP") for line in result.stderr.splitlines() if line.strip()]
        return Outcome(result.returncode, lines, "nothing" if not changed else ", ".join(changed))


def command_text(case: Case) -> str:
    args = [a.replace("{tmp}", "TMP").replace("{out}", "TMP/out") for a in case.args]
    return "dcasgd " + " ".join(args) + (" --out TMP/out" if case.out else "")


def table(rows: list[tuple[Case, Outcome]]) -> str:
    lines = ["| input | command | error line | exit | left on disk |", "|---|---|---|---:|---|"]
    for case, outcome in rows:
        first = outcome.stderr_lines[0] if outcome.stderr_lines else ""
        lines.append(f"| {case.what} | `{command_text(case)}` | `{first}` | {outcome.status} | "
                     f"{outcome.left_behind} |")
    return "\n".join(lines)


README = ROOT / "README.md"
EXIT_TABLE_START, EXIT_TABLE_END = "<!-- exit-table -->", "<!-- /exit-table -->"


def readme_with_exit_table(readme: str) -> str:
    """README.md's text with the exit-status table between its markers replaced by the CLI's own table."""
    sys.path.insert(0, str(ROOT / "src"))
    from dcasgd.cli import exit_table_markdown
    start, end = readme.index(EXIT_TABLE_START), readme.index(EXIT_TABLE_END)
    return readme[:start + len(EXIT_TABLE_START)] + "\n" + exit_table_markdown() + readme[end:]


def write_exit_table() -> None:
    README.write_text(readme_with_exit_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the exit-status table into {README}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    rows = [(case, run_case(case)) for case in CASES]
    body = table(rows)
    if args.write:
        write_exit_table()
        DOC.write_text("# Bad input: one error line, exit status 2, nothing left behind\n\n"
                       "_Generated by `python scripts/bad_input_table.py --write`; "
                       "`tests/test_bad_input_table.py` runs the same cases. TMP is a fresh temporary "
                       "directory; \"left on disk\" compares it before and after the command._\n\n"
                       + body + "\n", encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        print(body)
    return 0 if all(o.status == 2 and o.left_behind == "nothing" for _, o in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
