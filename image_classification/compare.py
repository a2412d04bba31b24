"""A table comparing evaluation reports (each run's ``report.json``):

python -m image_classification.compare logs/linear-eval/runs          # every report under the folder
python -m image_classification.compare runA/report.json runB/report.json
"""

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ("benchmark", "strategy", "backbone", "top-1 %", "95% CI", "n", "commit", "run")


def find_reports(paths: list[str]) -> list[Path]:
    """The report files named, and every ``report.json`` under the folders named."""
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(path.rglob("report.json")))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a report file nor a folder")
    return found


def row(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    score = report["score"]
    low, high = score["ci95"]
    return [
        str(report.get("benchmark")),
        str(report.get("strategy")),
        str(report.get("backbone", {}).get("name")),
        f"{100 * score['top1']:.2f}",
        f"{100 * low:.2f}-{100 * high:.2f}",
        str(score["n"]),
        (report.get("git_commit") or "-")[:8],
        str(path.parent),
    ]


def table(rows: list[list[str]]) -> str:
    rows = [list(COLUMNS), *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="report.json files, or folders to search for them")
    parser.add_argument("--sort", action="store_true", help="best top-1 first")
    args = parser.parse_args(argv)
    try:
        reports = find_reports(args.paths)
    except FileNotFoundError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    if not reports:
        print(f"Error: no report.json under {', '.join(args.paths)}", file=sys.stderr)
        return 1
    rows = [row(path) for path in reports]
    if args.sort:
        rows.sort(key=lambda r: -float(r[3]))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
