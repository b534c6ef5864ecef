"""Every dashboard in deploy/grafana/dashboards type-checks as ``@grafana/schema``'s
``Dashboard`` (the classic JSON model that file provisioning reads) with ``tsc --strict``.

No Grafana server installs here, so Grafana's own TypeScript types are the judge. Each
dashboard is written into a temporary folder as a TypeScript object literal annotated with
``Dashboard``, not imported as a JSON module: an imported JSON file's strings widen to
``string`` (a variable's ``"type": "datasource"`` then fails against the schema's union of
variable types for no real reason), while a literal is checked against the annotation
itself, with its excess properties refused.

What the schema can judge: the dashboard, its variables, panels' common fields (grid
position, datasource, field config, links) with their types and closed sets of values. It
cannot judge a panel's ``options`` or ``targets``: the schema types them as
``Record<string, unknown>``.

Needs Node and tests/browser's npm packages (``npm ci`` there); ``./dev test`` installs both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
NODE_MODULES = ROOT / "tests" / "browser" / "node_modules"
TSC = NODE_MODULES / ".bin" / "tsc"
SCHEMA = NODE_MODULES / "@grafana" / "schema"
TSCONFIG = {"compilerOptions": {
    "strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
    "moduleResolution": "bundler", "types": [], "skipLibCheck": True}}


def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text())
            for path in sorted(DASHBOARDS.glob("*.json"))}


def typecheck(dashboards: dict[str, dict[str, Any]], folder: Path) -> tuple[int, str]:
    """tsc's exit status and report for ``<name>.ts`` files, one ``Dashboard`` each."""
    missing = [what for what, present in (
        ("node (apt-get install nodejs npm)", shutil.which("node") is not None),
        ("tests/browser/node_modules/.bin/tsc (npm ci in tests/browser)", TSC.exists()),
        ("tests/browser/node_modules/@grafana/schema (npm ci in tests/browser)",
         SCHEMA.is_dir())) if not present]
    assert not missing, f"missing {', '.join(missing)}; ./dev test installs them"
    (folder / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    for name, dashboard in dashboards.items():
        (folder / f"{name}.ts").write_text(
            'import type { Dashboard } from "@grafana/schema";\n\n'
            f"export const dashboard: Dashboard = {json.dumps(dashboard, indent=2)};\n")
    (folder / "tsconfig.json").write_text(json.dumps(
        dict(TSCONFIG, files=[f"{name}.ts" for name in dashboards])))
    done = subprocess.run([str(TSC), "--project", str(folder)], cwd=folder,
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, NO_COLOR="1"))
    return done.returncode, done.stdout + done.stderr


def test_every_dashboard_type_checks_as_a_grafana_dashboard(tmp_path: Path) -> None:
    dashboards = _dashboards()
    assert dashboards, f"no dashboards in {DASHBOARDS}"
    status, report = typecheck(dashboards, tmp_path)
    assert status == 0, f"tsc --strict refuses a dashboard:\n{report}"


def test_the_type_check_refuses_a_misspelled_field_a_wrong_type_and_an_unknown_value(
        tmp_path: Path) -> None:
    """The check is not vacuous: three mistakes in a copy of the overview, three errors."""
    broken = _dashboards()["overview"]
    broken["title"] = 5
    panel = broken["panels"][0]
    panel["gridPosition"] = panel.pop("gridPos")
    broken["templating"]["list"][0]["type"] = "datasources"
    status, report = typecheck({"broken": broken}, tmp_path)
    assert status != 0, "tsc accepted a dashboard with three mistakes"
    errors = re.findall(r"^broken\.ts\(\d+,\d+\): error (TS\d+): (.*)$", report, re.M)
    assert len(errors) == 3, report
    for mistake in ("'number' is not assignable to type 'string'",
                    "'\"gridPosition\"' does not exist",
                    "'\"datasources\"' is not assignable to type 'VariableType'"):
        assert any(mistake in message for _, message in errors), f"{mistake}:\n{report}"
