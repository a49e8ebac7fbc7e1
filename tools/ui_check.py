"""Check the project's runs in the real MLflow UI, in headless Chromium: what users see, not what the API says.

    .venv/bin/python tools/ui_check.py                   # makes a store with one stage on the sample, then checks
    .venv/bin/python tools/ui_check.py --store DIR       # checks an existing store (DIR/mlflow.db) instead

Needs Chromium (``apt-get install -y chromium``) and Playwright (``pip install playwright``; no browser
download: the system Chromium is used). It starts ``mlflow ui`` on a free loopback port, opens the experiment's
runs table (``?workflowType=machine_learning``: MLflow 3 opens experiments on its GenAI overview otherwise),
expands every parent run, and asserts: the 3-level tree stage > grid point > fold, a non-empty Models column
on every fold row, and fold durations of at least a second. Screenshots go to ``--out``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_store(folder: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "PATH": f"{BIN}:{os.environ['PATH']}"}
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "ui-check"]
    for param in ("stage=kernel_size", "data=sample", "epochs=1", "folds=2"):
        command += ["-P", param]
    subprocess.run(command, check=True, env=env, cwd=folder, capture_output=True)


def seconds(text: str) -> float:
    """MLflow's duration cell ("1.3s", "850ms", "2.1min") in seconds."""
    match = re.fullmatch(r"([\d.]+)\s*(ms|s|min|h)", text.strip())
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


def read_table(page) -> list[dict]:
    """One dict per visible run row: name, nesting depth (indent in px), duration text, models text."""
    rows: dict[str, dict] = {}
    for row in page.locator(".ag-row").all():
        index = row.get_attribute("row-index")
        entry = rows.setdefault(index, {})
        name_cell = row.locator('[col-id="attributes.`Run Name`"]')
        if name_cell.count():
            entry["name"] = name_cell.locator("a").first.inner_text().strip()
            indent = name_cell.locator("div[style*='width']").first.get_attribute("style") or ""
            entry["indent"] = int(re.search(r"width:\s*(\d+)", indent).group(1)) if "width" in indent else 0
        for cell in row.locator(".ag-cell").all():
            header = (cell.get_attribute("col-id") or "").lower()
            if "duration" in header:
                entry["duration"] = cell.inner_text().strip()
            if "model" in header:
                entry["models"] = cell.inner_text().strip()
    return [rows[k] for k in sorted(rows, key=int)]


def check(uri_folder: Path, out: Path, experiment: str) -> list[str]:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    store = f"sqlite:///{uri_folder}/mlflow.db"
    experiment_id = MlflowClient(store).get_experiment_by_name(experiment).experiment_id
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    problems = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 2400, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
            page.wait_for_selector(".ag-row", timeout=60000)
            close = page.locator('button[aria-label="Close"]')  # the assistant panel hides columns
            if close.count():
                close.first.click()
            for _ in range(50):  # expand parents until every run is visible
                collapsed = [b for b in page.locator(EXPAND).all() if PLUS in b.inner_html()]
                if not collapsed:
                    break
                collapsed[0].click()
                page.wait_for_timeout(700)
            page.screenshot(path=str(out / "runs_table.png"), full_page=True)
            rows = read_table(page)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    depth = {indent: level for level, indent in enumerate(sorted({r.get("indent", 0) for r in rows}))}
    folds = [r for r in rows if r.get("name", "").startswith("fold ")]
    points = [r for r in rows if "=" in r.get("name", "")]
    stages = [r for r in rows if r.get("name") == "kernel_size"]
    if not (stages and points and folds):
        problems.append(f"expected stage, grid-point and fold rows; saw {[r.get('name') for r in rows]}")
    elif not depth[stages[0]["indent"]] < depth[points[0]["indent"]] < depth[folds[0]["indent"]]:
        problems.append("the runs are not nested stage > grid point > fold")
    for row in folds:
        if row.get("models", "-") in ("", "-"):
            problems.append(f"fold row {row['name']} shows no model in the Models column")
        if not seconds(row.get("duration", "")) >= 1.0:
            problems.append(f"fold row {row['name']} lasted {row.get('duration')!r}, not its training time")
    print(f"{len(rows)} rows: {len(stages)} stage, {len(points)} grid points, {len(folds)} folds")
    for row in rows:
        indent = "  " * depth[row.get("indent", 0)]
        print(f"  {indent}{row.get('name')}: {row.get('duration')}, models {row.get('models')}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="folder holding mlflow.db [default: make one]")
    parser.add_argument("--experiment", default="ui-check")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "ui-check")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.store
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="ui-check-"))
        make_store(folder)
    problems = check(folder.resolve(), args.out, args.experiment)
    for problem in problems:
        print(f"FAIL: {problem}")
    print("ok: the MLflow UI shows the run tree, fold models and true fold durations" if not problems else "")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
