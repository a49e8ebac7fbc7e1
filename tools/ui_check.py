"""Check the project's runs in the real MLflow UI, in headless Chromium: what users see, not what the API says.

    .venv/bin/python tools/ui_check.py                       # makes a store with one stage on the sample, then checks
    .venv/bin/python tools/ui_check.py --task digits         # digits: its `width` stage and a random search
    .venv/bin/python tools/ui_check.py --task cancer --joint optuna     # a task installed as a plug-in
    .venv/bin/python tools/ui_check.py --store DIR           # checks an existing store (DIR/mlflow.db) instead

Needs Chromium (``apt-get install -y chromium``) and Playwright (``pip install playwright``; no browser
download: the system Chromium is used). It makes the store with ``mlflow run`` (``--stage``, the task's first
stage by default, and with ``--joint`` a joint search of ``--trials`` configurations), starts ``mlflow ui`` on a
free loopback port, opens the experiment's runs table (``?workflowType=machine_learning``: MLflow 3 opens
experiments on its GenAI overview otherwise), expands every parent run, and asserts: the 3-level tree search >
candidate > fold, each row under the parent the store gives it, every candidate and fold of the store shown, a
non-empty Models column on every fold row, and fold durations that cover the fold's training (at least its
``fit_seconds`` and at least ``--min-fold-seconds``). Then it opens each search run's page and asserts that its
parameters name the task (param ``task``). Screenshots go to ``--out`` (default reports/ui-check/<task>/).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPAND = 'button[data-component-id*="runnamecellrenderer"]'
PLUS = "M7.25 7.25V4.5"  # the collapsed state's icon
DATA_ENV_VAR = "MLFLOW_MNIST_DATA"  # MNIST's location: an empty --data of another task must not fall back on it
DISPLAY_ROUNDING = 0.05  # the UI shows durations to a tenth of a second ("1.3s")


@dataclass
class Row:
    """A run as the runs table shows it: name, run id (from its link), nesting (indent in px), duration, models."""

    name: str = ""
    run_id: str = ""
    indent: int = 0
    duration: str = ""
    models: str = ""
    parent: str = ""  # the run id of the row above it with less indent: its parent as the UI draws it
    depth: int = 0


@dataclass
class StoreRun:
    """What the store says about a run: its parent, level, training time and params."""

    name: str
    parent: str
    level: str
    fit_seconds: float = float("nan")
    params: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_run(folder: Path, experiment: str, params: dict[str, str], *, task: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    if task != "mnist":
        env.pop(DATA_ENV_VAR, None)
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", experiment]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    proc = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: `mlflow run` with {params} failed:\n{proc.stderr[-3000:]}")


def make_store(folder: Path, experiment: str, *, task: str, stage: str, joint: str, trials: int, epochs: int) -> None:
    """One staged ``stage`` (if any) and one ``joint`` search (if any) of ``task``, 2 folds each."""
    common = {"task": task, "folds": "2"} | ({"data": "sample"} if task == "mnist" else {})
    if stage:
        mlflow_run(folder, experiment, {**common, "stage": stage, "epochs": str(epochs)}, task=task)
    if joint:
        mlflow_run(folder, experiment, {**common, "strategy": joint, "trials": str(trials)}, task=task)


def seconds(text: str) -> float:
    """MLflow's duration cell ("1.3s", "850ms", "2.1min") in seconds."""
    match = re.fullmatch(r"([\d.]+)\s*(ms|s|min|h)", text.strip())
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


def read_table(page) -> list[Row]:
    """One :class:`Row` per visible run row, top to bottom, each with the parent its indent shows."""
    rows: dict[str, Row] = {}
    for element in page.locator(".ag-row").all():
        row = rows.setdefault(element.get_attribute("row-index"), Row())
        name_cell = element.locator('[col-id="attributes.`Run Name`"]')
        if name_cell.count():
            link = name_cell.locator("a").first
            row.name = link.inner_text().strip()
            found = re.search(r"/runs/([0-9a-f]{32})", link.get_attribute("href") or "")
            row.run_id = found.group(1) if found else ""
            indent = name_cell.locator("div[style*='width']").first.get_attribute("style") or ""
            row.indent = int(re.search(r"width:\s*(\d+)", indent).group(1)) if "width" in indent else 0
        for cell in element.locator(".ag-cell").all():
            header = (cell.get_attribute("col-id") or "").lower()
            if "duration" in header:
                row.duration = cell.inner_text().strip()
            if "model" in header:
                row.models = cell.inner_text().strip()
    ordered = [rows[k] for k in sorted(rows, key=int)]
    depth = {indent: level for level, indent in enumerate(sorted({r.indent for r in ordered}))}
    above: list[Row] = []  # the open ancestors of the current row
    for row in ordered:
        row.depth = depth[row.indent]
        while above and above[-1].indent >= row.indent:
            above.pop()
        row.parent = above[-1].run_id if above else ""
        above.append(row)
    return ordered


def read_store(store: str, experiment_id: str) -> dict[str, StoreRun]:
    from mlflow import MlflowClient

    from mlflow_mnist import schema

    runs = {}
    for run in MlflowClient(store).search_runs([experiment_id], max_results=5000):
        tags = run.data.tags
        runs[run.info.run_id] = StoreRun(
            name=run.info.run_name,
            parent=tags.get(schema.PARENT, ""),
            level=tags.get(schema.LEVEL, ""),
            fit_seconds=run.data.metrics.get(schema.FIT_SECONDS, float("nan")),
            params=dict(run.data.params),
        )
    return runs


def start_ui(store: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    return server, port


def expand_all(page) -> None:
    for _ in range(100):  # expand parents until every run is visible
        collapsed = [b for b in page.locator(EXPAND).all() if PLUS in b.inner_html()]
        if not collapsed:
            return
        collapsed[0].click()
        page.wait_for_timeout(700)


def shown_params(page, url: str, search: str) -> dict[str, str]:
    """The rows of a run page's Parameters table that match ``search`` (typed into its search box, so the row is
    drawn however many parameters the run has), as the UI lists them (key -> value)."""
    page.goto(url)
    box = page.get_by_placeholder("Search parameters")
    box.wait_for(timeout=90000)
    box.fill(search)
    page.wait_for_timeout(1500)
    params = {}
    for row in page.locator("[role=row], tr").all():
        cells = [c.inner_text().strip() for c in row.locator("[role=cell], td").all()]
        if len(cells) >= 2 and cells[0]:
            params.setdefault(cells[0], cells[1])
    return params


def check(folder: Path, out: Path, experiment: str, task_name: str, min_fold_seconds: float) -> list[str]:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    from mlflow_mnist import schema

    store = f"sqlite:///{folder}/mlflow.db"
    found = MlflowClient(store).get_experiment_by_name(experiment)
    if found is None:
        return [f"the store {store} has no experiment {experiment!r}"]
    experiment_id = found.experiment_id
    runs = read_store(store, experiment_id)
    searches = {i: r for i, r in runs.items() if not r.parent and r.level in (schema.STAGE_LEVEL, schema.STEP_LEVEL)}
    server, port = start_ui(store)
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
    shown: dict[str, dict[str, str]] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 2400, "height": 1400})
            page.goto(f"{base}/runs?workflowType=machine_learning")
            page.wait_for_selector(".ag-row", timeout=90000)
            close = page.locator('button[aria-label="Close"]')  # the assistant panel hides columns
            if close.count():
                close.first.click()
            expand_all(page)
            page.screenshot(path=str(out / "runs_table.png"), full_page=True)
            rows = read_table(page)
            for run_id, search in searches.items():
                shown[run_id] = shown_params(page, f"{base}/runs/{run_id}", schema.TASK_PARAM)
                page.screenshot(path=str(out / f"search-{re.sub(r'[^A-Za-z0-9_.-]+', '_', search.name)}.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    problems = tree_problems(rows, runs, searches, min_fold_seconds)
    report(rows, runs)
    for run_id, search in searches.items():
        named = shown[run_id].get(schema.EFFECTIVE_PREFIX + schema.TASK_PARAM, shown[run_id].get(schema.TASK_PARAM))
        print(f"search run {search.name}: its page shows param task = {named}")
        if named != task_name:
            problems.append(f"search run {search.name} shows param task={named!r} in the UI, not {task_name!r}")
    return problems


def tree_problems(
    rows: list[Row], runs: dict[str, StoreRun], searches: dict[str, StoreRun], min_fold_seconds: float
) -> list[str]:
    """The UI's tree against the store's: search > candidate > fold, each row under its store parent, all shown."""
    from mlflow_mnist import schema

    problems = []
    by_id = {row.run_id: row for row in rows}
    if not searches:
        return ["the store holds no finished search run"]
    candidates = {i: r for i, r in runs.items() if r.level == schema.CANDIDATE_LEVEL and r.parent in searches}
    folds = {i: r for i, r in runs.items() if r.level == schema.FOLD_LEVEL and r.parent in candidates}
    for kind, expected in (("search", searches), ("candidate", candidates), ("fold", folds)):
        missing = [r.name for i, r in expected.items() if i not in by_id]
        if missing:
            problems.append(f"{len(missing)} {kind} run(s) of the store are not in the UI's table: {missing[:5]}")
    if not (candidates and folds):
        problems.append(f"expected search, candidate and fold rows; saw {[r.name for r in rows]}")
    for run_id, row in by_id.items():
        truth = runs.get(run_id)
        if truth is None:
            problems.append(f"row {row.name} links to run {run_id!r}, which the store does not hold")
        elif row.parent != truth.parent:
            problems.append(f"row {row.name} is drawn under {row.parent or 'nothing'}, not its parent {truth.parent}")
    for kind, expected, depth in (("search", searches, 0), ("candidate", candidates, 1), ("fold", folds, 2)):
        wrong = [by_id[i].name for i in expected if i in by_id and by_id[i].depth != depth]
        if wrong:
            problems.append(f"{kind} rows not at level {depth + 1} of the tree: {wrong[:5]}")
    for run_id, truth in folds.items():
        row = by_id.get(run_id)
        if row is None:
            continue
        label = f"fold row {runs[truth.parent].name} / {row.name}"
        if row.models in ("", "-"):
            problems.append(f"{label} shows no model in the Models column")
        lasted = seconds(row.duration)
        if not lasted >= max(min_fold_seconds, truth.fit_seconds - DISPLAY_ROUNDING):
            problems.append(
                f"{label} lasted {row.duration!r}, not its training time ({truth.fit_seconds:.2f} s of fit, "
                f"at least {min_fold_seconds} s)"
            )
    return problems


def report(rows: list[Row], runs: dict[str, StoreRun]) -> None:
    levels = [runs[r.run_id].level if r.run_id in runs else "?" for r in rows]
    counts = {level: levels.count(level) for level in dict.fromkeys(levels)}
    print(f"{len(rows)} rows: " + ", ".join(f"{n} {level}" for level, n in counts.items()))
    for row in rows:
        print(f"  {'  ' * row.depth}{row.name}: {row.duration}, models {row.models}")


def main() -> None:
    from mlflow_mnist.strategies import SPACE_FORM, searching

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="folder holding mlflow.db [default: make one]")
    parser.add_argument("--experiment", default="ui-check")
    parser.add_argument("--task", default="mnist", help="a registered task or module:attr [default: mnist]")
    parser.add_argument("--stage", help="the staged stage to run [default: mnist kernel_size, else the first]")
    parser.add_argument(
        "--joint",
        choices=[*searching(SPACE_FORM), "none"],
        help="also a joint search of the task's default space [default: random, none for mnist]",
    )
    parser.add_argument("--trials", type=int, default=2, help="configurations of the joint search")
    parser.add_argument("--epochs", type=int, help="epochs of the staged stage [default: mnist 1, else the task's]")
    # A floor that catches runs shown as lasting no time (start = end); the real check is fit_seconds. 1.0 s failed
    # the default 1-epoch sample folds on a 2-core AMX Xeon, which trained in 0.6-0.7 s.
    parser.add_argument("--min-fold-seconds", type=float, default=0.2, help="shortest fold duration accepted")
    parser.add_argument("--out", type=Path, help="screenshots [default: reports/ui-check/<task>]")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from mlflow_mnist.params import StageError
    from mlflow_mnist.tasks import get_task

    try:
        task = get_task(args.task)
    except StageError as error:
        sys.exit(f"error: {error}")
    out = args.out or ROOT / "reports" / "ui-check" / task.name
    out.mkdir(parents=True, exist_ok=True)
    for old in [out / "runs_table.png", *out.glob("search-*.png")]:  # this check's own, from an earlier one
        old.unlink(missing_ok=True)
    folder = args.store
    if folder is None:
        mnist = task.name == "mnist"
        stage = args.stage if args.stage is not None else ("kernel_size" if mnist else next(iter(task.stages), ""))
        joint = args.joint or ("none" if mnist or not task.spaces else "random")
        epochs = args.epochs or (1 if mnist else int(task.start.get("epochs", 6)))
        folder = Path(tempfile.mkdtemp(prefix="ui-check-"))
        print(f"store {folder}: task {args.task}, stage {stage or '-'}, joint search {joint}", flush=True)
        joint = "" if joint == "none" else joint
        make_store(folder, args.experiment, task=args.task, stage=stage, joint=joint, trials=args.trials, epochs=epochs)
    problems = check(folder.resolve(), out, args.experiment, task.name, args.min_fold_seconds)
    for problem in problems:
        print(f"FAIL: {problem}")
    shots = sorted(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in out.glob("*.png"))
    print("screenshots: " + ", ".join(shots))
    if not problems:
        print("ok: the MLflow UI shows the run tree, fold models, true fold durations and the task")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
