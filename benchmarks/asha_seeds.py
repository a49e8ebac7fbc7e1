"""ASHA, the batched pruner and Hyperband over several seeds: one ``bench_asha.py`` report per seed, side by side.

    python benchmarks/asha_seeds.py benchmarks/results/asha-auto.json benchmarks/results/asha-auto-seed*.json \
        --out benchmarks/results/asha-seeds-xeon

One run per variant cannot rank them: TPE's seeded first draws decide which trial is good, and the order in which
asynchronous rungs finish decides when it gets there. This reads reports of ``bench_asha.py --seed N`` (the same
space, folds, target, precision and task; refused otherwise) and gives, per variant and seed:

- reach, as ``peers_seeds.py`` reads the peers: the fold-epochs and minutes at which its best mean CV first reached
  the target (a seed that did not reach it counts as never in the median and ranks after any that did), the median
  over seeds and how many seeds each variant was first on;
- at equal fold-epochs: its best mean CV once it had spent the smallest total any variant of that seed spent (the
  report's own reading), beside its best in all, and how many seeds each variant was highest on (ties count for
  each);
- the workers' idle share of its search.

Writes ``<out>.md``, ``<out>.png`` (reach, one dot per seed) and ``<out>-equal.png`` (best mean CV at equal
fold-epochs and the idle share, each seed's variants joined by a line), and names the CPUs.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import peers_seeds
from bench_asha import ReportError, read_report, reports_command

# A bfloat16 run's scores are not a float32 run's; an eager ASHA's curve is not a quota one's.
SAME = (*peers_seeds.SAME, "precision", "promotion")


def load(paths: list[Path]) -> list[dict]:
    """The reports, checked to be comparable, each with its variants also under ``results`` (the peers' key)."""
    reports = []
    for path in paths:
        report = read_report(path, "bench_asha.py")
        if "variants" not in report or "common_fold_epochs" not in report:
            raise ReportError(f"{path}: not a bench_asha.py report (no variants)")
        # Reports from before --precision or --promotion ran the defaults.
        reports.append({"precision": "float32", "promotion": "quota", **report, "results": report["variants"]})
    return peers_seeds.check_alike(paths, reports, same=SAME, row="variant")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def equal_info(reports: list[dict]) -> dict:
    """Per variant: per seed, its best mean CV at that seed's equal fold-epochs, its best in all and its idle
    share; the medians over seeds; on how many seeds it was highest at equal fold-epochs."""
    table: dict[str, dict] = {}
    for report in reports:
        seed = report.get("seed", 0)
        for name, variant in report["variants"].items():
            table.setdefault(name, {"seeds": {}})["seeds"][seed] = {
                "best_at_common": variant["best_at_common_fold_epochs"],
                "best_mean_cv": variant["best_mean_cv"],
                "idle": variant["workers_idle_share"],
            }
    for row in table.values():
        runs = row["seeds"].values()
        for key in ("best_at_common", "best_mean_cv", "idle"):
            row[f"median_{key}"] = _median([run[key] for run in runs if run[key] is not None])
        row["highest"] = 0
    for report in reports:
        seed = report.get("seed", 0)
        scored = {name: row["seeds"][seed]["best_at_common"] for name, row in table.items() if seed in row["seeds"]}
        scored = {name: value for name, value in scored.items() if value is not None}
        top = max(scored.values(), default=None)
        for name, value in scored.items():
            table[name]["highest"] += value == top
    common = {report.get("seed", 0): report["common_fold_epochs"] for report in reports}
    return {"variants": table, "seeds": sorted(common), "common": common}


def _cv(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def equal_markdown(info: dict) -> str:
    seeds = info["seeds"]
    header = " | ".join(f"seed {seed} (at {info['common'][seed]:.0f})" for seed in seeds)
    lines = [
        "",
        "## At equal fold-epochs, and the workers' idle share",
        "",
        "Per seed: the best mean CV once the variant had spent that seed's smallest total (in brackets), then its "
        "best in all; a variant with no full-budget trial by then: `-`.",
        "",
        f"| variant | {header} | median at equal / in all | highest at equal | idle share per seed | median idle |",
        "| --- | " + " | ".join("---:" for _ in seeds) + " | ---: | ---: | ---: | ---: |",
    ]
    for name, row in info["variants"].items():
        runs = [row["seeds"].get(seed) for seed in seeds]
        cells = [
            "not run" if run is None else f"{_cv(run['best_at_common'])} / {_cv(run['best_mean_cv'])}" for run in runs
        ]
        idle = ", ".join("-" if run is None or run["idle"] is None else f"{run['idle']:.1%}" for run in runs)
        median_idle = row["median_idle"]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {_cv(row['median_best_at_common'])} / {_cv(row['median_best_mean_cv'])} | {row['highest']} of "
            f"{len(row['seeds'])} | {idle} | {'-' if median_idle is None else f'{median_idle:.1%}'} |"
        )
    return "\n".join(lines) + "\n"


def plot_equal(info: dict, path: Path, *, title: str, target: float) -> None:
    """Two panels, one x position per variant: the best mean CV at equal fold-epochs (the target dotted) and the
    workers' idle share; each seed's variants joined by a line in that seed's colour (the comparison is paired)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    names = list(info["variants"])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    panels = (("best_at_common", "best mean CV at equal fold-epochs"), ("idle", "workers' idle share"))
    for axis, (key, label) in zip(axes, panels, strict=True):
        for seed in info["seeds"]:
            points = [
                (x, run[key])
                for x, name in enumerate(names)
                if (run := info["variants"][name]["seeds"].get(seed)) is not None and run[key] is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, color=f"C{seed}", marker="o", linewidth=1, label=f"seed {seed}")
        if key == "best_at_common":
            axis.axhline(target, color="grey", linestyle=":", linewidth=1)
            axis.annotate(f"target {target}", (-0.3, target), xytext=(0, 3), textcoords="offset points", fontsize=7)
        else:
            axis.yaxis.set_major_formatter(PercentFormatter(1.0))
            axis.set_ylim(bottom=0)
        axis.set_xticks(range(len(names)), names)
        axis.set_xlim(-0.4, len(names) - 0.6)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    # Below the panels, where no seed's points or the target's label can sit.
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=7, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args, reports = reports_command(
        argv, doc=__doc__, reports_help="bench_asha.py reports (.json), one per seed", load=load
    )
    reach, equal = peers_seeds.reach_info(reports), equal_info(reports)
    first = reports[0]
    heading = "ASHA, the batched pruner and Hyperband"
    text = peers_seeds.markdown(reach, reports, heading=heading, script="bench_asha.py", row="variant")
    text += equal_markdown(equal)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    cpus = ", ".join(sorted({report["machine"]["cpu"] for report in reports}))
    where = f"--space {first['space']}, --precision {first['precision']}, {cpus}"
    peers_seeds.plot(reach, args.out.with_suffix(".png"), title=f"Reach of {first['target']}, {where}")
    equal_path = args.out.with_name(args.out.name + "-equal.png")
    plot_equal(equal, equal_path, title=f"At equal fold-epochs, {where}", target=first["target"])
    print(text)
    print(f"written: {args.out.with_suffix('.md')}, .png, {equal_path.name}")


if __name__ == "__main__":
    main()
