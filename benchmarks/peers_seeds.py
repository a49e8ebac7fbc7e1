"""The peers over several seeds: one ``bench_peers.py`` report per seed, read side by side.

    python benchmarks/peers_seeds.py benchmarks/results/peers-xeon.json benchmarks/results/peers-xeon-seed*.json \
        --out benchmarks/results/peers-seeds-xeon

One run per peer cannot rank them: a lucky early trial decides when a search first reaches the target. This reads
reports of ``bench_peers.py --seed N`` (the same space, folds and target; refused otherwise; where their trials
differ, e.g. ours given as many trials as spend the fold-epochs the others spend, each row names its trials) and gives,
per peer and seed, the fold-epochs and minutes at which its best mean CV first reached the target (``-`` and what it
spent in all where it did not), and per peer the median over seeds (a seed that did not reach it counts
as never) and how many seeds it was first on.
A peer that did not reach the target counts as having spent everything it spent and more (ranked after any peer
that reached it). Writes ``<out>.md`` and ``<out>.png`` (fold-epochs and minutes to the target, one dot per seed,
a bar at the median; a triangle on the "not reached" line where it did not reach it) and names the CPUs.

Reports of ``bench_peers.py --same-draws`` (plain Optuna given ours' draws) are also read pairwise: a configuration
both trained the full budget is the same draw under the same trial number in each, so per seed it gives the
fold-epochs at which each had finished it and what each scored; ``<out>-paired.png`` plots one against the other.
Where the target lies within training noise of a configuration's score, one peer may reach it with a configuration
the other finished first and scored just under it; the pairs show which peer's rule finishes the same work sooner.
"""

from __future__ import annotations

import math
import re
import statistics
import textwrap
from pathlib import Path

from bench_asha import (
    ROUNDING,  # the rule by which bench_peers.py's reports say "reached"
    ReportError,
    read_report,
    reports_command,
)

SAME = ("space", "folds", "target", "task")  # what must match for reports to be read side by side
MEASURES = (("fold_epochs", "fold-epochs to the target"), ("minutes", "minutes to the target"))
PAIRED = ("optuna", "ours")  # the peers whose trial numbers name the same draws under --same-draws
LEGACY_TRIAL = re.compile(r"trial (\d+)\b")  # reports from before curve points carried their trial number


def load(paths: list[Path]) -> list[dict]:
    """The reports, checked to be comparable; each peer's run of each seed given once."""
    reports = [read_report(path, "bench_peers.py") for path in paths]
    for path, report in zip(paths, reports, strict=True):
        if "results" not in report:
            raise ReportError(f"{path}: not a bench_peers.py report (no results)")
    return check_alike(paths, reports, same=SAME, row="peer")


def check_alike(paths: list[Path], reports: list[dict], *, same: tuple[str, ...], row: str) -> list[dict]:
    """``reports`` (each with its ``results`` per row name) sorted by seed, once every setting in ``same`` is
    equal in all and each row's run of each seed is given once; else :class:`ReportError` naming the file."""
    first = reports[0]
    for path, report in zip(paths, reports, strict=True):
        differ = [key for key in same if report.get(key) != first.get(key)]
        if differ:
            raise ReportError(f"{path}: {', '.join(differ)} differ from {paths[0]}'s: run every seed alike")
    runs = [(label, seed) for report in reports for label, seed in _rows(report, reports)]
    if len(set(runs)) != len(runs):
        raise ReportError(f"{sorted(runs)}: give each {row}'s run of each seed once")
    return sorted(reports, key=lambda report: report.get("seed", 0))


def _label(name: str, report: dict, reports: list[dict]) -> str:
    """A peer's row: its name, with its trials where the reports ran different numbers (ours given more), ours'
    promotion rule where it is not the default (reports from before the option ran the default), and plain Optuna's
    draws where they were ours' (``--same-draws``)."""
    parts = [name]
    if name == "ours" and report.get("promotion", "quota") != "quota":
        parts.append(f"{report['promotion']} promotion")
    if name == "optuna" and report.get("same_draws"):
        parts.append("ours' draws")
    if len({_trial_counts(r) for r in reports}) > 1:
        parts.append(f"{_trial_count(report, name)} trials")
    return ", ".join(parts)


def _trial_count(report: dict, name: str) -> int:
    """A row's trials: one number for every peer (bench_peers.py), or one per variant (bench_asha.py)."""
    trials = report["trials"]
    return trials[name] if isinstance(trials, dict) else trials


def _trial_counts(report: dict) -> str:
    trials = report["trials"]
    return ",".join(f"{k}={v}" for k, v in trials.items()) if isinstance(trials, dict) else str(trials)


def _rows(report: dict, reports: list[dict]) -> list[tuple[str, int]]:
    return [(_label(name, report, reports), report.get("seed", 0)) for name in report["results"]]


def reach_info(reports: list[dict]) -> dict:
    """Per peer: per seed, where it reached the target (or what it spent), and the medians; per seed, who led."""
    table: dict[str, dict] = {}
    for report in reports:
        seed = report.get("seed", 0)
        for name, result in report["results"].items():
            table.setdefault(_label(name, report, reports), {"seeds": {}})["seeds"][seed] = {
                "reached": result["fold_epochs_to_target"] is not None,
                "fold_epochs": result["fold_epochs_to_target"] or result["fold_epochs"],
                "minutes": result["minutes_to_target"] or result["minutes"],
                "spent_fold_epochs": result["fold_epochs"],
                "spent_minutes": result["minutes"],
                "best_mean_cv": result["best_mean_cv"],
            }
    for row in table.values():
        runs = list(row["seeds"].values())
        row["reached"] = sum(run["reached"] for run in runs)
        for measure, _ in MEASURES:
            # A seed that never reached it counts as never (infinite): a median of the lucky seeds alone would
            # flatter a peer that often misses; where the median is never, there is none.
            median = statistics.median(run[measure] if run["reached"] else math.inf for run in runs)
            row[f"median_{measure}"] = median if math.isfinite(median) else None
            row[f"first_{measure}"] = 0
    seeds = sorted({report.get("seed", 0) for report in reports})
    for seed in seeds:
        here = {label: row["seeds"][seed] for label, row in table.items() if seed in row["seeds"]}
        for measure, _ in MEASURES:
            # Not reaching it ranks after reaching it, whatever it spent.
            lead = min(here, key=lambda label: (not here[label]["reached"], here[label][measure]))
            table[lead][f"first_{measure}"] += 1
    return {"peers": table, "seeds": seeds}


def _trial_of(point: dict) -> int | None:
    """A curve point's trial number: the ``trial`` its report recorded; a report written before points carried it
    has only the candidate's label ("trial N"), read here for those alone."""
    if "trial" in point:
        return point["trial"]
    match = LEGACY_TRIAL.match(point.get("candidate") or "")
    return int(match.group(1)) if match else None


def _finishes(result: dict) -> dict[int, dict]:
    """A peer's configurations trained the full budget, by trial number: fold-epochs and minutes spent when it
    finished, its score."""
    finished = {}
    for point in result.get("curve", []):
        trial = _trial_of(point)
        if trial is not None and point.get("mean") is not None:
            spent = {"fold_epochs": point["fold_epochs"], "minutes": point.get("minutes"), "mean": point["mean"]}
            finished.setdefault(trial, spent)
    return finished


def paired_info(reports: list[dict]) -> list[dict]:
    """Per seed run with ``--same-draws``: each configuration plain Optuna and ours both trained the full budget, with
    the fold-epochs at which each had finished it and each one's mean CV (the same draw, trained by each)."""
    pairs = []
    for report in reports:
        results = report["results"]
        if not report.get("same_draws") or not all(name in results for name in PAIRED):
            continue
        optuna, ours = (_finishes(results[name]) for name in PAIRED)
        for trial in sorted(set(optuna) & set(ours)):
            pairs.append({"seed": report.get("seed", 0), "trial": trial, "optuna": optuna[trial], "ours": ours[trial]})
    return pairs


def paired_markdown(pairs: list[dict], target: float) -> str:
    if not pairs:
        return ""
    sooner = sum(pair["ours"]["fold_epochs"] < pair["optuna"]["fold_epochs"] for pair in pairs)
    ratio = statistics.median(pair["ours"]["fold_epochs"] / pair["optuna"]["fold_epochs"] for pair in pairs)
    lines = [
        "",
        "## Same draws: the configurations both trained the full budget",
        "",
        "Plain Optuna given ours' draws (`--same-draws`): the same configuration under the same trial number. Per "
        f"pair, the fold-epochs each had spent when it finished that configuration, and its mean CV (target {target}). "
        f"Ours finished {sooner} of {len(pairs)} sooner in fold-epochs; ours' fold-epochs over Optuna's, median of the "
        f"pairs: {ratio:.2f}.",
        "",
        "| seed | trial | optuna: fold-epochs / minutes | optuna: mean CV | ours: fold-epochs / minutes "
        "| ours: mean CV |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def spent(finish: dict) -> str:
        minutes = finish["minutes"]
        return f"{finish['fold_epochs']:.0f}" + ("" if minutes is None else f" / {minutes:.1f}")

    for pair in pairs:
        o, u = pair["optuna"], pair["ours"]
        lines.append(
            f"| {pair['seed']} | {pair['trial']} | {spent(o)} | {o['mean']:.5f} | {spent(u)} | {u['mean']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def plot_pairs(pairs: list[dict], path: Path, *, title: str, target: float) -> None:
    """Ours' fold-epochs at each shared configuration's finish against plain Optuna's; filled where it reached the
    target in that peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.6, 5.2))
    top = 1.08 * max(max(pair["optuna"]["fold_epochs"], pair["ours"]["fold_epochs"]) for pair in pairs)
    axis.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
    axis.annotate("finished at the same point", (0.55 * top, 0.55 * top), rotation=45, fontsize=7, color="grey")
    for index, pair in enumerate(pairs):
        x, y = pair["optuna"]["fold_epochs"], pair["ours"]["fold_epochs"]
        color = f"C{pair['seed']}"
        # Optuna a large square, ours a dot on it with a dark rim (seen on a filled square); filled: reached.
        for value, marker, size, edge in (
            (pair["optuna"]["mean"], "s", 110, color),
            (pair["ours"]["mean"], "o", 34, "k"),
        ):
            reached = value >= target - ROUNDING
            axis.scatter(x, y, s=size, marker=marker, color=color if reached else "white", edgecolors=edge, zorder=3)
        # Labels alternate below and above their point: nearby pairs' labels stay apart.
        below = (7, -9) if index % 2 else (7, 3)
        axis.annotate(f"trial {pair['trial']}", (x, y), xytext=below, textcoords="offset points", fontsize=7)
    for seed in sorted({pair["seed"] for pair in pairs}):
        axis.scatter([], [], s=60, marker="s", color=f"C{seed}", label=f"seed {seed}")
    axis.legend(fontsize=7, loc="upper left")
    axis.set_xlim(0, top)
    axis.set_ylim(0, top)
    axis.set_xlabel("plain Optuna: fold-epochs spent when it finished the configuration", fontsize=8)
    axis.set_ylabel("ours: fold-epochs spent when it finished it", fontsize=8)
    axis.grid(alpha=0.3)
    note = (
        "below the diagonal: ours finished it sooner; square (Optuna) and dot (ours) filled where that peer's "
        f"mean CV reached {target}"
    )
    axis.set_title(title + "\n" + textwrap.fill(note, 80), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _trials(reports: list[dict]) -> str:
    counts = sorted({_trial_counts(report) for report in reports})
    return counts[0] if len(counts) == 1 else " or ".join(counts) + " (as each row says)"


def markdown(
    info: dict, reports: list[dict], *, heading: str = "The peers", script: str = "bench_peers.py", row: str = "peer"
) -> str:
    """The reach table: ``heading`` names what is compared, ``script`` what made the reports, ``row`` a row."""
    first = reports[0]
    cpus = sorted({report["machine"]["cpu"] for report in reports})
    lines = [
        f"# {heading} over {len(info['seeds'])} seeds: reach of a mean CV of {first['target']}",
        "",
        f"`{script} --space {first['space']} --trials {_trials(reports)} --folds {first['folds']}`, seeds "
        f"{', '.join(map(str, info['seeds']))}; CPU: {', '.join(cpus)}. Per seed: fold-epochs / minutes at which the "
        "best mean CV so far first reached the target (`-` and what it spent in all where it did not).",
        "",
        f"| {row} | " + " | ".join(f"seed {seed}" for seed in info["seeds"]) + " | reached | median fold-epochs "
        "| median minutes | first on fold-epochs | first on minutes |",
        "| --- | " + " | ".join("---:" for _ in info["seeds"]) + " | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in info["peers"].items():
        cells = []
        for seed in info["seeds"]:
            run = row["seeds"].get(seed)
            if run is None:
                cells.append("not run")
            elif run["reached"]:
                cells.append(f"{run['fold_epochs']:.0f} / {run['minutes']:.1f}")
            else:
                cells.append(f"- ({run['spent_fold_epochs']:.0f} / {run['spent_minutes']:.1f})")
        medians = [row[f"median_{m}"] for m, _ in MEASURES]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {row['reached']} of {len(row['seeds'])} | "
            + " | ".join("-" if v is None else f"{v:.{0 if i == 0 else 1}f}" for i, v in enumerate(medians))
            + f" | {row['first_fold_epochs']} | {row['first_minutes']} |"
        )
    return "\n".join(lines) + "\n"


def plot(info: dict, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(info["peers"])
    width = max(5.5, 1.2 * len(names))  # each row's seeds side by side, their labels apart
    figure, axes = plt.subplots(1, len(MEASURES), figsize=(width * len(MEASURES), 4.6))
    for axis, (measure, label) in zip(axes, MEASURES, strict=True):
        # A seed that never reached the target is drawn above every reach, not at what it spent (which may be
        # less than another's reach and would read as a win).
        runs = [run for name in names for run in info["peers"][name]["seeds"].values()]
        never = 1.12 * max(max(run[measure], run[f"spent_{measure}"]) for run in runs)
        axis.axhline(never, color="grey", linestyle=":", linewidth=1)
        axis.annotate("not reached", (-0.55, never), xytext=(0, 3), textcoords="offset points", fontsize=7)
        for x, name in enumerate(names):
            row = info["peers"][name]
            for offset, (seed, run) in enumerate(sorted(row["seeds"].items())):
                dx = (offset - (len(row["seeds"]) - 1) / 2) * 0.11
                value = run[measure] if run["reached"] else never
                axis.scatter(x + dx, value, s=40, color=f"C{x}", marker="o" if run["reached"] else "^", zorder=3)
                axis.annotate(str(seed), (x + dx, value), xytext=(4, 0), textcoords="offset points", fontsize=7)
            median = row[f"median_{measure}"]
            if median is not None:
                axis.hlines(median, x - 0.25, x + 0.25, color=f"C{x}", linewidth=2)
        # One line per part of a row's name (its rule, its trials), long parts wrapped.
        ticks = ["\n".join(textwrap.fill(part, 10) for part in name.split(", ")) for name in names]
        axis.set_xticks(range(len(names)), ticks)
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.set_ylim(0, never * 1.08)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(title + "\none dot per seed (label: seed); triangle: not reached; bar: median", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args, reports = reports_command(
        argv, doc=__doc__, reports_help="bench_peers.py reports (.json), one per seed", load=load
    )
    info, pairs = reach_info(reports), paired_info(reports)
    first = reports[0]
    text = markdown(info, reports) + paired_markdown(pairs, first["target"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    cpus = ", ".join(sorted({report["machine"]["cpu"] for report in reports}))
    title = f"Reach of {first['target']}, --space {first['space']}, {_trials(reports)} trials, {cpus}"
    plot(info, args.out.with_suffix(".png"), title=title)
    written = [".png"]
    if pairs:
        paired = args.out.with_name(args.out.name + "-paired.png")
        plot_pairs(pairs, paired, title=f"Same draws, --space {first['space']}, {cpus}", target=first["target"])
        written.append(paired.name)
    print(text)
    print(f"written: {args.out.with_suffix('.md')}, {', '.join(written)}")


if __name__ == "__main__":
    main()
