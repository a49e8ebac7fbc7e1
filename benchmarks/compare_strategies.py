"""Strategies at equal compute, read back from the stores of measured campaigns (bench_campaign.py).

    python benchmarks/compare_strategies.py staged halving optuna champion

For each campaign in benchmarks/results/campaign-<name>.json or <name>.json (``--results``: another folder; its
store is named there; the champion's search is one): the best mean CV accuracy it reached, the fold-epochs and
wall time it spent in all, and the fold-epochs and minutes it needed to first reach the first campaign's best
(within the ROPE: a practically equivalent accuracy counts as reached). Each campaign's best configuration is
compared with the first's on the same splits (all campaigns split with seed 0) by the corrected repeated k-fold
t-test of analysis/stats.py. Draws the anytime figure of all of them (analysis/anytime.py) and writes
benchmarks/results/strategies.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import stats  # noqa: E402
from analysis.anytime import get_anytime_info, render_anytime  # noqa: E402
from analysis.searches import search_table  # noqa: E402
from analysis.store import metric_column, param_column, read_runs, tag_column  # noqa: E402
from mlflow_mnist import schema, tracking  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def best_fold_scores(runs: pd.DataFrame, anytime: pd.DataFrame) -> tuple[str, pd.Series]:
    """The held-out accuracy per (repeat, fold) of the best full-budget candidate a campaign found.

    Its folds are the fold runs under its candidate run and those the candidate reused (tag
    ``reused_fold_runs``), not every fold of its configuration: a staged step retrains the configuration it
    carried in as its reference, under other fold keys."""
    best = anytime.loc[anytime["mean"].idxmax()]
    level = runs[tag_column(schema.LEVEL)]
    candidates = runs[(level == schema.CANDIDATE_LEVEL) & (runs[tag_column(schema.CANDIDATE)] == best["candidate"])]
    candidates = candidates[(candidates[metric_column(schema.MEAN_HELDOUT_ACCURACY)] - best["mean"]).abs() < 1e-12]
    candidate = candidates.iloc[0]
    reused = candidate.get(tag_column(schema.REUSED))
    reused = [run_id for run_id in reused.split(",") if run_id] if isinstance(reused, str) else []
    own = (runs[tag_column(schema.PARENT)] == candidate["run_id"]) | runs["run_id"].isin(reused)
    folds = runs[(level == schema.FOLD_LEVEL) & own & (runs["status"] == "FINISHED")]
    folds = folds.drop_duplicates(tag_column(schema.FOLD_KEY))
    index = folds[param_column(schema.REPEAT_PARAM)].astype(int) * 100 + folds[param_column(schema.FOLD_PARAM)].astype(
        int
    )
    return best["candidate"], pd.Series(
        folds[metric_column(schema.HELDOUT_ACCURACY)].to_numpy(), index=index
    ).sort_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("campaigns", nargs="+", help="names of benchmarks/results/campaign-<name>.json")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the campaigns' reports are")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    infos, rows, scores = [], [], {}
    for name in args.campaigns:
        path = args.results / f"campaign-{name}.json"
        report = json.loads((path if path.exists() else args.results / f"{name}.json").read_text())
        runs = read_runs(tracking.connect(f"sqlite:///{report['store']}/mlflow.db"), None)
        info = get_anytime_info(search_table(runs)).assign(search=name)
        infos.append(info)
        candidate, scores[name] = best_fold_scores(runs, info)
        rows.append(
            {
                "campaign": name,
                "best_mean_cv": float(info["best_so_far"].max()),
                "best_candidate": candidate,
                # from the store, the same way for every strategy: the search's closing row holds its totals
                "fold_epochs": int(info["fold_epochs"].max()),
                "minutes": float(info["minutes"].max()),
            }
        )
    target = rows[0]["best_mean_cv"] - stats.DEFAULT_ROPE
    for row, info in zip(rows, infos, strict=True):
        reached = info[info["best_so_far"] >= target]
        row["fold_epochs_to_reach_first"] = float(reached["fold_epochs"].iloc[0]) if len(reached) else None
        row["minutes_to_reach_first"] = float(reached["minutes"].iloc[0]) if len(reached) else None
        reference = scores[rows[0]["campaign"]]
        paired = scores[row["campaign"]].reindex(reference.index)
        if row is not rows[0] and paired.notna().all():
            comparison = stats.compare(paired.to_numpy(), reference.to_numpy(), n_folds=len(reference))
            low, high = comparison.interval()
            row["vs_first"] = {
                "difference": comparison.mean,
                "ci": [low, high],
                "verdict": comparison.verdict(comparison.p_value),
                "p": comparison.p_value,
            }
    args.out.mkdir(parents=True, exist_ok=True)
    render_anytime(pd.concat(infos, ignore_index=True), args.out / "strategies.png")
    (args.out / "strategies.json").write_text(json.dumps(rows, indent=2, default=str))
    (args.out / "strategies.md").write_text(markdown(rows))
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        f"Reaching {first['campaign']}'s best mean CV accuracy ({first['best_mean_cv']:.5f}, within the ROPE of "
        f"{stats.DEFAULT_ROPE * 100:.1f} points); the same splits everywhere; figure: strategies.png.",
        "",
        "| campaign | best mean CV | fold-epochs in all | minutes in all | fold-epochs to reach it | minutes to reach "
        "it "
        f"| best vs {first['campaign']}'s best (corrected t-test, 95% CI) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        vs = row.get("vs_first")
        verdict = (
            f"{vs['difference'] * 100:+.2f} pts [{vs['ci'][0] * 100:+.2f}, {vs['ci'][1] * 100:+.2f}]: {vs['verdict']}"
            if vs
            else "-"
        )
        reach, share = row["fold_epochs_to_reach_first"], None
        if reach is not None:
            share = f"{reach:.0f} ({reach / first['fold_epochs']:.0%})"
        minutes = "-" if reach is None else f"{row['minutes_to_reach_first']:.1f}"
        lines.append(
            f"| {row['campaign']} | {row['best_mean_cv']:.5f} | {row['fold_epochs']} | {row['minutes']:.1f} | "
            f"{share or 'not reached'} | {minutes} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
