"""ASHA with continued rungs vs today's batched pruner, and Hyperband brackets vs one bracket, at equal fold-epochs.

    python benchmarks/bench_asha.py --data ../shared/datasets/mnist                      # wide, ~230 fold-epochs each
    python benchmarks/bench_asha.py --data ../shared/datasets/mnist --trials optuna=20,asha=15,hyperband=8
    python benchmarks/bench_asha.py --data ../shared/datasets/mnist --space seed --trials optuna=40,asha=64,hyperband=40
    python benchmarks/bench_asha.py --data ../shared/datasets/mnist --promotion eager       # ASHA promoting eagerly
    python benchmarks/bench_asha.py --quick                                                  # a smoke run, ~2 min

What is compared: three searches over the same space (``--space``, default ``wide``) on the same data (real
2-vs-7), the same folds (``--folds``, split seed ``--seed``, default 0, which also seeds every variant's draws)
and the same 2 workers, each from an empty SQLite store in its
own fresh process (``python -m mlflow_mnist tune``, an argument list, never a shell string), one after another:

- ``optuna``: ``--strategy optuna``, today's batched search: TPE asks 2x-workers trials at a time, Optuna's
  ``SuccessiveHalvingPruner`` cuts them at each rung, and every rung retrains its folds from scratch;
- ``asha``: ``--strategy asha``, asynchronous successive halving, one bracket, promoted trials continue their
  folds' models;
- ``hyperband``: ``--strategy asha --brackets N``, the same with trials spread over all N first rungs (3 on the
  wide space; 2 on ``--quick``'s seed space from 2 epochs).

How: the store alone is read back (``analysis.searches.search_table``): every full-budget trial as it finished,
with the fold-epochs the search had trained and the minutes since its search run started. From that anytime
curve, per variant: the best mean CV accuracy reached; the fold-epochs and minutes at which the best so far first
reached ``--target`` (default 0.99656, the staged grid's best; a mean rounding to it, within 5e-6, counts); the
fold-epochs and minutes spent in all; the workers' idle share (the search run's metric ``workers_idle_share``).
The script cannot make fold-epochs equal (a search stops after ``--trials`` trials, whatever they cost), so it
also reads each curve at the smallest total any variant spent: the best mean CV so far at equal fold-epochs. The
default trials per variant (optuna 12, asha 17, hyperband 6) are what spends about 230 fold-epochs each on the wide
space (rungs 2, 6, 18 epochs, 3 folds): the batched pruner ~18 fold-epochs a trial (measured: 12 trials, 232); ASHA
~13 (Li et al.'s rule; the strategy itself run on two simulated workers with random scores, 3 seeds each: 17 trials
198-234 fold-epochs; measured in make champion: 8 trials, 132; measured here on wide: 17 trials, 318, because TPE's
later trials kept entering each rung's top third, see docs/performance.md); Hyperband ~40 (a third of its trials
start at the full budget; 6 trials 240 in the same simulation; measured here: 240).
Low rungs never count: a trial enters the curve when it finishes the full budget.

Writes benchmarks/results/asha.{json,md} and asha.png (best CV so far against fold-epochs and against minutes,
one line per variant; asha-<space>.* for a space other than wide, -eager added for ``--promotion eager``,
-seed<N> for a seed other than 0) and names the CPU. ``--quick`` runs the shipped sample over the small ``seed``
space (2 folds, 3 trials each, ASHA's first rung at 2 epochs) into a temporary folder unless ``--out`` is given: it
checks the wiring, it measures nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

import machine  # noqa: E402

from mlflow_mnist.strategies.asha import PROMOTION_RULES, rung_budgets  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_TARGET = 0.99656  # the staged grid's best mean CV accuracy (benchmarks/results/campaign-staged.md)
ROUNDING = 5e-6  # the target is printed to 5 decimals: a mean that rounds to it has reached it
EXPERIMENT = "bench"
#: The variants, in the order they run: the tune arguments that make each one.
VARIANTS: dict[str, list[str]] = {
    "optuna": ["--strategy", "optuna"],
    "asha": ["--strategy", "asha"],
    "hyperband": ["--strategy", "asha"],  # and --brackets: one per rung (variant_arguments)
}
ASHA_VARIANTS = ("asha", "hyperband")  # the ones that read --min-epochs and --promotion
DEFAULT_TRIALS = "optuna=12,asha=17,hyperband=6"  # about 230 fold-epochs each on the wide space (see above)


class BenchError(ValueError):
    """Bad input to a benchmark: one line, exit 2, nothing written."""


# -- scripts that read several reports together ------------------------------------------------------------------
class ReportError(ValueError):
    """Reports that cannot be read together; the message names the file and the fix."""


def read_report(path: Path, kind: str) -> dict:
    """One JSON report of the script ``kind``; a file that is not JSON raises :class:`ReportError`."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: not a {kind} report ({type(error).__name__})") from None


def reports_command(argv: list[str] | None, *, doc: str, reports_help: str, load) -> tuple[argparse.Namespace, list]:
    """The command line of a script that reads several reports (.json) into one ``--out`` stem: its arguments and
    what ``load`` made of the reports; a :class:`ReportError` is one line, exit 1, nothing written."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help=reports_help)
    parser.add_argument("--out", type=Path, required=True, help="the stem of the .md and .png to write")
    args = parser.parse_args(argv)
    try:
        return args, load(args.reports)
    except ReportError as error:
        sys.exit(f"error: {error}")


# -- running one search ------------------------------------------------------------------------------------------
def tune_env(store: Path) -> dict[str, str]:
    """The environment of a fresh `tune` process: its own SQLite store, quiet TensorFlow, no inherited run."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri(store), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    return env


def scratch(prefix: str, *, quick: bool) -> Path:
    """A new folder for the stores: in memory (/dev/shm) for a quick run, where a SQLite commit costs no disk
    sync; on disk, as users keep them, for a measurement."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if quick and shm.is_dir() else None))


def prepare(args: argparse.Namespace, settings, *, prefix: str) -> tuple[dict, Path, Path]:
    """A benchmark's run settings (``settings(args)``; bad input is one line, exit 2, nothing written), the folder
    its report goes to (``--out``; a temporary one for ``--quick``, else benchmarks/results) and its stores'."""
    try:
        run = settings(args)
    except (BenchError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    out = args.out or (Path(tempfile.mkdtemp(prefix=f"{prefix}quick-")) if args.quick else RESULTS)
    stores = args.stores or scratch(prefix, quick=args.quick)
    print(f"stores in {stores}", flush=True)
    return run, out, stores


def run_each(names, one) -> dict:
    """``one(name)`` for every name, in order; a search that failed ends the benchmark with its log's tail in one
    line, exit 1, no traceback of ours."""
    try:
        return {name: one(name) for name in names}
    except (BenchError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def report_stem(prefix: str, run: dict) -> str:
    """A report's file stem: one space's, promotion rule's, pairing's, precision's or seed's report never hides
    another's (wide, quota, draws of each peer's own, float32 and seed 0 unnamed)."""
    space = "" if run["space"] == "wide" else f"-{run['space']}"
    promotion = run.get("promotion", "quota")
    return (
        f"{prefix}{space}"
        + (f"-{promotion}" if promotion != "quota" else "")
        + ("-samedraws" if run.get("same_draws") else "")
        + (f"-{run['precision']}" if run.get("precision", "float32") != "float32" else "")
        + (f"-seed{run['seed']}" if run["seed"] else "")
    )


def write_report(out: Path, stem: str, report: dict, text: str) -> None:
    """``<stem>.json`` and ``<stem>.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(text)


def check_stores(stores: Path | None, names: list[str]) -> None:
    """Every run starts from an empty folder: a ``--stores`` that already holds one of them is refused."""
    for name in names if stores is not None else []:
        folder = stores / name
        if folder.exists() and any(folder.iterdir()):
            raise BenchError(f"--stores {stores}: {name}/ there already holds a run; give a new or empty folder")


def store_uri(store: Path) -> str:
    return f"sqlite:///{store}/mlflow.db"


def run_tune(store: Path, arguments: list[str]) -> float:
    """``python -m mlflow_mnist tune ARGUMENTS`` into ``store`` (made empty here); returns its wall seconds.

    Its output (progress bars) goes to ``store/tune.log``; a failure raises with the log's last lines."""
    store.mkdir(parents=True, exist_ok=True)
    if (store / "mlflow.db").exists():
        raise BenchError(f"{store} already holds a store: every variant starts from an empty one")
    command = [sys.executable, "-m", "mlflow_mnist", "tune", "--experiment", EXPERIMENT, *arguments]
    log = store / "tune.log"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(command, env=tune_env(store), cwd=store, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:]
        raise RuntimeError(f"tune {' '.join(arguments)} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return wall


# -- reading it back -------------------------------------------------------------------------------------------
def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def read_search(store: Path) -> dict:
    """The one search in ``store``, from the store alone: its anytime curve (one point per full-budget trial as it
    finished, then where it stopped), what it spent, its best candidate and configuration, its idle share."""
    from analysis.searches import search_roots, search_table
    from analysis.store import read_runs
    from mlflow_mnist import schema, tracking

    runs = read_runs(tracking.connect(store_uri(store)), None)
    roots = search_roots(runs)
    if len(roots) != 1:
        raise RuntimeError(f"{store}: expected one finished search run, found {len(roots)}")
    root = roots.iloc[0]
    table = search_table(runs)
    closing = table[table["candidate"] == ""].iloc[-1]
    curve = anytime_curve(table)
    scored = [p for p in curve if p["mean"] is not None]
    best = max(scored, key=lambda p: p["mean"]) if scored else None
    trials = runs.get(f"tags.{schema.TRIAL}")
    # What the search trained in, `auto` resolved by its probe: the param `precision`, or `effective_precision`
    # where `mlflow run` had logged the -P value under that name first.
    precisions = [root.get(f"params.{name}") for name in (schema.EFFECTIVE_PREFIX + schema.PRECISION, schema.PRECISION)]
    return {
        "curve": curve,
        "fold_epochs": float(closing["fold_epochs"]),
        "minutes": float(closing["minutes"]),
        "best_mean_cv": best["mean"] if best else None,
        "best_candidate": best["candidate"] if best else None,
        "best_config": schema.best_config(schema.tags_of_row(root)),
        "full_budget_trials": len(scored),
        "trials": int(trials.dropna().nunique()) if trials is not None else 0,
        "workers_idle_share": _number(root.get(f"metrics.{schema.WORKERS_IDLE_SHARE}")),
        "precision": next((v for v in precisions if isinstance(v, str)), None),
    }


def anytime_curve(search) -> list[dict]:
    """One search's rows (``analysis.searches.search_table``'s columns: its full-budget candidates as they finished,
    then a closing row with no score) -> its best-so-far curve as plain points, by the analysis report's rule."""
    from analysis.anytime import get_anytime_info

    return [
        {
            "fold_epochs": float(row["fold_epochs"]),
            "minutes": float(row["minutes"]),
            "best_so_far": float(row["best_so_far"]),
            "candidate": row["candidate"],
            "trial": _trial(row.get("trial")),
            "mean": _number(row["mean"]),
        }
        for _, row in get_anytime_info(search).iterrows()
    ]


def _trial(value) -> int | None:
    """A trial number as the table holds it (an int, or a float beside missing ones; None or NaN: no trial)."""
    number = _number(value)
    return None if number is None else int(number)


def best_at(curve: list[dict], fold_epochs: float) -> float | None:
    """The best mean CV a search had found once it had trained ``fold_epochs`` fold-epochs (None: nothing yet)."""
    reached = [p["best_so_far"] for p in curve if p["fold_epochs"] <= fold_epochs + 1e-9]
    return max(reached) if reached else None


def reach(curve: list[dict], target: float) -> dict | None:
    """The first point of the curve whose best so far reached ``target`` (within the target's rounding)."""
    return next((p for p in curve if p["best_so_far"] >= target - ROUNDING), None)


# -- the report --------------------------------------------------------------------------------------------------
def grid_fold_epochs(results: Path) -> float | None:
    """The staged grid's fold-epochs in all, where its campaign report is at hand (the goal is a share of it)."""
    path = results / "campaign-staged.json"
    if not path.exists():
        path = RESULTS / "campaign-staged.json"
    try:
        return float(json.loads(path.read_text())["fold_epochs"])
    except (OSError, KeyError, ValueError):
        return None


def summarize(variants: dict[str, dict], *, target: float) -> float:
    """Adds each variant's point at the target and its best at equal fold-epochs; returns that common budget."""
    common = min(v["fold_epochs"] for v in variants.values())
    for variant in variants.values():
        variant["best_at_common_fold_epochs"] = best_at(variant["curve"], common)
        point = reach(variant["curve"], target)
        variant["fold_epochs_to_target"] = point["fold_epochs"] if point else None
        variant["minutes_to_target"] = point["minutes"] if point else None
    return common


def _cell(value: float | None, form: str, missing: str = "-") -> str:
    return missing if value is None else format(value, form)


def markdown(report: dict) -> str:
    grid = report["grid_fold_epochs"]
    lines = [
        f"ASHA vs the batched pruner, Hyperband vs one bracket: `--space {report['space']}`, {report['folds']} folds, "
        f"data {report['data']}, each variant from an empty store in its own process, one after another, on "
        f"{machine.line(report['machine'])}. Target: a mean CV of {report['target']:.5f}"
        + (" (the staged grid's best)" if report["target"] == DEFAULT_TARGET else "")
        + (f"; the staged grid spent {grid:.0f} fold-epochs in all" if grid else "")
        + f". At equal fold-epochs: each curve read at {report['common_fold_epochs']:.0f}, the smallest total. "
        f"Figure: {report['stem']}.png.",
        "",
        "| variant | tune arguments | trials | fold-epochs in all | minutes in all | best mean CV | "
        f"best at {report['common_fold_epochs']:.0f} fold-epochs | fold-epochs to target | minutes to target | "
        "workers idle |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in report["variants"].items():
        to_target = v["fold_epochs_to_target"]
        share = f" ({to_target / grid:.0%} of the grid's)" if to_target is not None and grid else ""
        lines.append(
            f"| {name} | `{' '.join(v['arguments'])}` | {v['trials']} | {v['fold_epochs']:.0f} | {v['minutes']:.1f} | "
            f"{_cell(v['best_mean_cv'], '.5f')} | {_cell(v['best_at_common_fold_epochs'], '.5f')} | "
            f"{_cell(to_target, '.0f', 'not reached')}{share} | {_cell(v['minutes_to_target'], '.1f', '-')} | "
            f"{_cell(v['workers_idle_share'], '.1%')} |"
        )
    lines += ["", "Best configuration per variant (trained in):", ""]
    for name, v in report["variants"].items():
        trained_in = f", {v['precision']}" if v.get("precision") else ""
        lines.append(f"- {name} ({v['best_candidate']}{trained_in}): `{json.dumps(v['best_config'])}`")
    return "\n".join(lines) + "\n"


def plot_curves(
    curves: dict[str, list[dict]], path: Path, *, target: float, common: float | None, axes: tuple[str, ...], title: str
) -> Path:
    """Best mean CV so far, one step line per search (to where it stopped), against each of ``axes``
    (``fold_epochs``, ``minutes``); the target as a dashed line, equal fold-epochs as a dotted one."""
    from analysis._plotting import style

    with style():  # the report's look
        return _draw_curves(curves, path, target=target, common=common, axes=axes, title=title)


def _draw_curves(
    curves: dict[str, list[dict]], path: Path, *, target: float, common: float | None, axes: tuple[str, ...], title: str
) -> Path:
    from analysis._plotting import save, subplots

    labels = {"fold_epochs": "fold-epochs trained", "minutes": "wall time since the search started (minutes)"}
    fig, panels = subplots(1, len(axes), figsize=(6 * len(axes), 5), sharey=True, squeeze=False)
    values = sorted(p["best_so_far"] for curve in curves.values() for p in curve)
    for ax, x in zip(panels[0], axes, strict=True):
        for name, curve in curves.items():
            xs, ys = [p[x] for p in curve], [p["best_so_far"] for p in curve]
            ax.step(xs, ys, where="post", marker="o", ms=3, label=name)
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.5f}")
        if x == "fold_epochs" and common:
            ax.axvline(common, color="grey", ls=":", lw=1, label=f"equal fold-epochs ({common:.0f})")
        ax.margins(x=0.03)
        ax.set(xlabel=labels[x], xlim=(0, None))
    panels[0][0].set_ylabel("best mean CV accuracy so far")
    if values:
        # The interesting part is near the top: the lowest 5% of points may fall below the frame.
        low, high = min(values[int(0.05 * (len(values) - 1))], target), max(values[-1], target)
        pad = max(0.001, 0.05 * (high - low))
        panels[0][0].set_ylim(max(0.0, low - pad), min(1.0 + pad, high + pad))
    handles = {}
    for ax in panels[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, path, tight=False)


# -- the command -------------------------------------------------------------------------------------------------
def parse_trials(text: str, names: list[str]) -> dict[str, int]:
    """``12`` (every variant) or ``optuna=12,asha=17,hyperband=6`` (each named one; the rest take the plain number
    given, else 12)."""
    plain, named = None, {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.rpartition("=")
        if name and name not in VARIANTS:
            raise BenchError(f"--trials {text!r}: unknown variant {name!r}; the variants are {', '.join(VARIANTS)}")
        try:
            count = int(value)
        except ValueError:
            raise BenchError(f"--trials {text!r}: {value!r} is not a whole number of trials") from None
        if count < 1:
            raise BenchError(f"--trials {text!r}: a variant needs at least 1 trial")
        if name:
            named[name] = count
        else:
            plain = count
    return {name: named.get(name, plain or 12) for name in names}


def parse_variants(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise BenchError(f"--variants {text!r}: choose among {', '.join(VARIANTS)} (comma-separated)")
    return names


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="MNIST (IDX folder or .npz) [default: $MLFLOW_MNIST_DATA]")
    parser.add_argument("--space", default="wide", help="the search space: wide, seed or seed20 [default: wide]")
    parser.add_argument(
        "--trials", default=DEFAULT_TRIALS, help="trials per variant: 12 (each), or [default] %(default)s"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which to run, in order [default: all]")
    parser.add_argument("--min-epochs", type=int, default=0, help="ASHA's first rung (0: the space's budget / 9)")
    parser.add_argument(
        "--promotion",
        default="quota",
        help=f"asha's and hyperband's --promotion: {' or '.join(PROMOTION_RULES)} [default: quota]",
    )
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the split and every variant's draws [default: 0]")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET, help="mean CV to reach [default: %(default)s]")
    parser.add_argument(
        "--precision",
        default="float32",
        help="every variant's: float32, mixed_bfloat16 or auto [default: float32, as the earlier reports]",
    )
    parser.add_argument(
        "--stores",
        type=Path,
        default=None,
        help="where the stores go [default: a new temp folder; --quick: in /dev/shm]",
    )
    parser.add_argument("--out", type=Path, default=None, help="where the report goes [default: benchmarks/results]")
    parser.add_argument("--quick", action="store_true", help="the shipped sample, 2 folds, 3 trials: a smoke run")
    return parser


def settings(args: argparse.Namespace) -> dict:
    """The validated run settings; a bad value raises :class:`BenchError` before anything runs."""
    from mlflow_mnist.campaign import data_source
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.tasks.base import PRECISIONS
    from mlflow_mnist.tasks.mnist.data import DATA_ENV_VAR

    task = get_task("mnist")
    names = parse_variants(args.variants)
    if args.quick:
        # Three trials, ASHA's factor: one reaches the full budget even when none learns in 2 epochs on the
        # sample's 400 images (a trial near chance goes on only once its rung has seen factor such trials).
        data, space_name, folds, trials = "sample", "seed", 2, dict.fromkeys(names, 3)
        min_epochs = args.min_epochs or 2
    else:
        data = args.data if args.data is not None else os.environ.get(DATA_ENV_VAR, "")
        space_name, folds, min_epochs = args.space, args.folds, args.min_epochs
        trials = parse_trials(args.trials, names)
        if not data:
            raise BenchError("real MNIST is needed: pass --data ../shared/datasets/mnist or set MLFLOW_MNIST_DATA")
    if data != "sample" and not Path(data).expanduser().exists():
        raise BenchError(f"--data {data}: no such file or folder; give MNIST's IDX folder or .npz")
    space = task.get_space(space_name)  # an unknown space: one line naming the known ones
    if folds < 2:
        raise BenchError(f"--folds {folds}: cross-validation needs at least 2")
    if args.seed < 0:
        raise BenchError(f"--seed {args.seed}: give 0 or more")
    check_stores(args.stores, names)
    if not 0 < args.target <= 1:
        raise BenchError(f"--target {args.target}: a mean CV accuracy is between 0 and 1")
    if args.precision not in (*PRECISIONS, "auto"):
        raise BenchError(f"--precision {args.precision}: give {', '.join(PRECISIONS)} or auto")
    if args.promotion not in PROMOTION_RULES:
        raise BenchError(f"--promotion {args.promotion}: give {' or '.join(PROMOTION_RULES)}")
    if min_epochs < 0 or min_epochs >= space.max_epochs:
        raise BenchError(f"--min-epochs {min_epochs}: give 0 (automatic) or fewer than the space's {space.max_epochs}")
    factor = 3  # tune's --halving-factor default, which the variants leave as it is
    rungs = rung_budgets(space.max_epochs, factor, min_epochs or max(1, space.max_epochs // factor**2))
    return {
        "data": data_source(task, data),
        "space": space.name,
        "brackets": len(rungs),
        "folds": folds,
        "seed": args.seed,
        "trials": trials,
        "min_epochs": min_epochs,
        "promotion": args.promotion,
        "precision": args.precision,
        "target": args.target,
        "quick": args.quick,
    }


def variant_arguments(name: str, run: dict) -> list[str]:
    arguments = [*VARIANTS[name], "--space", run["space"], "--trials", str(run["trials"][name])]
    if name == "hyperband":  # one bracket per rung: every rung a trial can start at
        arguments += ["--brackets", str(run.get("brackets", 3))]
    arguments += ["--data", run["data"], "--folds", str(run["folds"]), "--seed", str(run["seed"])]
    arguments += ["--precision", run.get("precision", "float32")]
    if name in ASHA_VARIANTS and run["min_epochs"]:
        arguments += ["--min-epochs", str(run["min_epochs"])]
    if name in ASHA_VARIANTS and run.get("promotion", "quota") != "quota":
        arguments += ["--promotion", run["promotion"]]
    return arguments


def run_variant(name: str, run: dict, stores: Path) -> dict:
    """One variant from an empty store in a fresh process, read back from its store."""
    arguments = variant_arguments(name, run)
    print(f"{name}: tune {' '.join(arguments)}", flush=True)
    wall = run_tune(stores / name, arguments)
    v = {"arguments": arguments, "store": str(stores / name), "wall_seconds": wall, **read_search(stores / name)}
    print(
        f"{name}: {v['trials']} trials, {v['fold_epochs']:.0f} fold-epochs, {v['minutes']:.1f} min, best mean CV "
        f"{_cell(v['best_mean_cv'], '.5f')}, workers idle {_cell(v['workers_idle_share'], '.1%')}",
        flush=True,
    )
    return v


def curves_title(run: dict, cpu: str) -> str:
    """The figure's title: what was searched, how, and on what (a precision other than float32, a promotion rule
    other than quota named)."""
    precision, promotion = run.get("precision", "float32"), run.get("promotion", "quota")
    return (
        f"Best mean CV so far, --space {run['space']}, {run['folds']} folds, seed {run['seed']}"
        + (f", --precision {precision}" if precision != "float32" else "")
        + (f", ASHA --promotion {promotion}" if promotion != "quota" else "")
        + f" ({cpu})"
    )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    run, out, stores = prepare(args, settings, prefix="bench-asha-")
    variants = run_each(run["trials"], lambda name: run_variant(name, run, stores))
    common = summarize(variants, target=run["target"])
    stem = report_stem("asha", run)
    report = {
        "machine": machine.describe(),
        "stem": stem,
        **run,
        # The goal is a share of the grid's fold-epochs: it applies to the real data at the grid's 3 folds.
        "grid_fold_epochs": grid_fold_epochs(out) if not run["quick"] and run["folds"] == 3 else None,
        "common_fold_epochs": common,
        "variants": variants,
    }
    write_report(out, stem, report, markdown(report))
    plot_curves(
        {name: v["curve"] for name, v in variants.items()},
        out / f"{stem}.png",
        target=run["target"],
        common=common,
        axes=("fold_epochs", "minutes"),
        title=curves_title(run, machine.describe()["cpu"]),
    )
    print(markdown(report))
    print(f"written: {out / stem}.json, .md, .png")


if __name__ == "__main__":
    main()
