"""Write results/README.md from the files `dcasgd report` generated (no number typed by hand).

    python scripts/results_readme.py

It stitches, per preset under results/, the findings (does the paper's
ordering hold, with the spread over seeds), a pointer to the table and the
plots, and the compensation-probe paragraph where there is one.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"

INTRO = """# Results: does DC-ASGD's advantage hold on Fashion-MNIST?

Zheng et al. (ICML 2017, Table 1; CIFAR-10, ResNet-20, 160 epochs) report
DC-ASGD-a < DC-ASGD-c < ASGD, SSGD in test error at M = 4 and 8 workers.
These studies repeat the comparison on the simulated cluster, on real data,
at laptop scale: Fashion-MNIST with an MLP (`fmnist-mlp`) and a small CNN with
BatchNorm and dropout (`fmnist-cnn`), M in {1, 4, 8, 16, 32}, 3 seeds, each
method's learning rate chosen on a 5000-sample validation split held out from
the training set. The runs are far shorter than the paper's (a few epochs, not
160), so they test the early-training regime, where staleness hurts most.

Every number below is copied by `scripts/results_readme.py` from files that
`dcasgd report` wrote; each table names the command that produced its runs.
The simulator is deterministic: the same commands give the same numbers.
"""


def section(preset: Path) -> list[str]:
    lines = [f"## `{preset.name}`", ""]
    meta_path = preset / "runs" / "compare.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        rel = preset.relative_to(RESULTS.parent)
        lines += [f"Made by `{meta['command']}` then `dcasgd report {rel / 'runs'} --to {rel}` "
                  f"(commit `{meta['git_commit']}`).", ""]
    findings = preset / "findings.md"
    if findings.exists():
        lines += findings.read_text().splitlines()[2:] + [""]
    lines += [f"Full table with the chosen learning rates: [`{preset.name}/table.md`]({preset.name}/table.md) "
              f"(also `table.csv`). Plots: "
              + ", ".join(f"[`{p.name}`]({preset.name}/{p.name})" for p in sorted(preset.glob("*.png"))) + ".", ""]
    compensation = preset / "compensation.md"
    if compensation.exists():
        text = compensation.read_text().splitlines()
        lines += ["### " + text[0].lstrip("# ")] + text[1:] + [""]
    return lines


def main() -> None:
    lines = INTRO.splitlines() + [""]
    for preset in sorted(p for p in RESULTS.iterdir() if p.is_dir() and (p / "table.md").exists()):
        lines += section(preset)
    out = RESULTS / "README.md"
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
