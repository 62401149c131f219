"""Render the canonical-task experiment's CSVs as the Markdown tables of the README.

rope-behavior tasks --out results/tasks-full          # writes the CSVs (about 20 min)
python scripts/results_table.py results/tasks-full    # prints the tables
"""

import sys
from pathlib import Path

import pandas as pd

SETTINGS = ["all", "high", "low", "nope", "two_angle:0.1"]


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def accuracy_table(results: pd.DataFrame) -> str:
    n_pairs = int(results.loc[results["setting"].str.startswith("pair:"), "pair"].max()) + 1
    alias = {"high": "pair:0", "low": f"pair:{n_pairs - 1}"}
    mid = f"pair:{n_pairs // 2}"
    cols = ["all", "high", mid, "low", "nope", "two_angle:0.1"]
    stats = results.groupby(["task", "setting"])["accuracy"].agg(["mean", "min", "count"])
    lines = [
        "| task | "
        + " | ".join(f"`{c}`" + (f" (`{alias[c]}`)" if c in alias else "") for c in cols)
        + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for task in results["task"].drop_duplicates():
        cells = []
        for c in cols:
            key = (task, alias.get(c, c))
            if key not in stats.index:
                cells.append("–")
                continue
            row = stats.loc[key]
            cells.append(
                _fmt(row["mean"]) + (f" (min {_fmt(row['min'])})" if row["count"] > 1 else "")
            )
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair_curve(results: pd.DataFrame) -> str:
    pairs = results[results["setting"].str.startswith("pair:")]
    table = pairs.groupby(["task", "pair"])["accuracy"].mean().unstack("pair")
    header = "| task \\ pair | " + " | ".join(str(int(p)) for p in table.columns) + " |"
    lines = [header, "|---" * (len(table.columns) + 1) + "|"]
    for task, row in table.iterrows():
        lines.append(f"| {task} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


def by_position(by_pos: pd.DataFrame, setting: str) -> str:
    part = by_pos[(by_pos["task"] == "index") & (by_pos["setting"] == setting)]
    curve = part.groupby("answer_position")["accuracy"].mean()
    return f"Index accuracy by answer position under `{setting}`: " + ", ".join(
        f"{v:.2f}" for v in curve
    )


def plane(plane_df: pd.DataFrame) -> str:
    lines = ["| task | head | s_POS | s_SYM | identifiable |", "|---|---|---|---|---|"]
    for _, r in plane_df.iterrows():
        lines.append(
            f"| {r['task']} | L{r['layer']}H{r['head']} | {r['s_pos']:.3f} | {r['s_sym']:.3f} | "
            f"{r['identifiable_fraction']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    results = pd.read_csv(out / "results.csv")
    n_pairs = int(results.loc[results["setting"].str.startswith("pair:"), "pair"].max()) + 1
    print(accuracy_table(results))
    print()
    print(pair_curve(results))
    print()
    print(by_position(pd.read_csv(out / "by_position.csv"), f"pair:{n_pairs // 2}"))
    print()
    print(plane(pd.read_csv(out / "plane.csv")))
    runs = len(results)
    print(
        f"\n{runs} runs; longest {results['seconds'].max():.0f} s, median {results['seconds'].median():.0f} s"
    )


if __name__ == "__main__":
    main()
