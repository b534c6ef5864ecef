"""Every dashboard in deploy/grafana/dashboards type-checks as ``@grafana/schema``'s
``Dashboard`` (the classic JSON model that file provisioning reads) with ``tsc --strict``.

No Grafana server installs here, so Grafana's own TypeScript types are the judge. Each
dashboard is written into a temporary folder as a TypeScript object literal annotated with
``Dashboard``, not imported as a JSON module: an imported JSON file's strings widen to
``string`` (a variable's ``"type": "datasource"`` then fails against the schema's union of
variable types for no real reason), while a literal is checked against the annotation
itself, with its excess properties refused.

``Dashboard`` judges the dashboard, its variables and panels' common fields (grid position,
datasource, field config, links): names, types and closed sets of values. It types a panel's
``options`` as ``Record<string, unknown>``, so the check narrows each panel by its ``type`` to
its plugin's ``Options`` (timeseries and stat, from the same package): every field optional,
since Grafana fills a plugin's defaults, and string enums read as their values, since JSON
holds the value and never a TypeScript enum member. A panel of another type is refused until
its plugin's ``Options`` is added to ``PRELUDE``. Queries (``targets``) stay unchecked: the
schema has no Prometheus query type.

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
_PANELCFG = "@grafana/schema/dist/esm/raw/composable/{0}/panelcfg/x/{1}PanelCfg_types.gen"
PRELUDE = f"""import type {{ Dashboard, Panel, RowPanel }} from "@grafana/schema";
import type {{ Options as TimeSeries }} from "{_PANELCFG.format("timeseries", "TimeSeries")}";
import type {{ Options as Stat }} from "{_PANELCFG.format("stat", "Stat")}";

/** What JSON can hold of T: every field optional, a string enum as its values. */
type Json<T> = T extends string ? `${{T}}`
  : T extends readonly (infer E)[] ? Json<E>[]
  : T extends object ? {{ [K in keyof T]?: Json<T[K]> }}
  : T;
type Typed<K extends string, O> = Omit<Panel, "type" | "options"> & {{
  type: K;
  options?: Json<O>;
}};
export type Checked = Omit<Dashboard, "panels"> & {{
  panels?: Array<Typed<"timeseries", TimeSeries> | Typed<"stat", Stat> | RowPanel>;
}};
"""
TSCONFIG = {"compilerOptions": {
    "strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
    "moduleResolution": "bundler", "types": [], "skipLibCheck": True}}


def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text())
            for path in sorted(DASHBOARDS.glob("*.json"))}


def typecheck(dashboards: dict[str, dict[str, Any]], folder: Path) -> tuple[int, str]:
    """tsc's exit status and report for ``<name>.ts`` files, one dashboard each."""
    missing = [what for what, present in (
        ("node (apt-get install nodejs npm)", shutil.which("node") is not None),
        ("tests/browser/node_modules/.bin/tsc (npm ci in tests/browser)", TSC.exists()),
        ("tests/browser/node_modules/@grafana/schema (npm ci in tests/browser)",
         SCHEMA.is_dir())) if not present]
    assert not missing, f"missing {', '.join(missing)}; ./dev test installs them"
    (folder / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    (folder / "checked.ts").write_text(PRELUDE)
    for name, dashboard in dashboards.items():
        (folder / f"{name}.ts").write_text(
            'import type { Checked } from "./checked";\n\n'
            f"export const dashboard: Checked = {json.dumps(dashboard, indent=2)};\n")
    (folder / "tsconfig.json").write_text(json.dumps(
        dict(TSCONFIG, files=["checked.ts", *(f"{name}.ts" for name in dashboards)])))
    done = subprocess.run([str(TSC), "--project", str(folder)], cwd=folder,
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, NO_COLOR="1"))
    return done.returncode, done.stdout + done.stderr


def test_every_dashboard_type_checks_as_a_grafana_dashboard(tmp_path: Path) -> None:
    dashboards = _dashboards()
    assert dashboards, f"no dashboards in {DASHBOARDS}"
    status, report = typecheck(dashboards, tmp_path)
    assert status == 0, f"tsc --strict refuses a dashboard:\n{report}"


def test_the_type_check_refuses_misspelled_fields_wrong_types_and_unknown_values(
        tmp_path: Path) -> None:
    """The check is not vacuous: five mistakes in a copy of the overview, five errors."""
    broken = _dashboards()["overview"]
    broken["title"] = 5
    broken["templating"]["list"][0]["type"] = "datasources"
    # tsc reports one excess property per panel: two panels
    first, second = [panel for panel in broken["panels"] if panel["type"] == "timeseries"][:2]
    first["gridPosition"] = first.pop("gridPos")
    second["options"]["legend"]["placment"] = second["options"]["legend"].pop("placement")
    stat = next(panel for panel in broken["panels"] if panel["type"] == "stat")
    stat["options"]["colorMode"] = "backgrond"
    status, report = typecheck({"broken": broken}, tmp_path)
    assert status != 0, "tsc accepted a dashboard with five mistakes"
    errors = re.findall(r"^broken\.ts\(\d+,\d+\): error (TS\d+): (.*)$", report, re.M)
    assert len(errors) == 5, report
    for mistake in ("'number' is not assignable to type 'string'",
                    "'\"datasources\"' is not assignable to type 'VariableType'",
                    "'\"gridPosition\"' does not exist",
                    "'\"placment\"' does not exist",
                    "'\"backgrond\"' is not assignable"):
        assert any(mistake in message for _, message in errors), f"{mistake}:\n{report}"
