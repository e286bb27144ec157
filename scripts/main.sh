#!/usr/bin/env bash
# The main job on the embedded default: generate the world (once), then run the nightly stages for
# one date and say where everything is. Environment: ROOT (object root, default ./data),
# DS (logical date; default: the day after the world's last day of logs), ICG_CONFIG (config file).
set -euo pipefail
cd "$(dirname "$0")/.."
ICG=.venv/bin/icg
ROOT="${ROOT:-./data}"
DS="${DS:-$(.venv/bin/python -c 'import datetime as d; from icg_core.config import load_config; w = load_config().world; print(w.start_date + d.timedelta(days=w.days))')}"

started=$(date +%s)
if [ ! -e "$ROOT/raw/impressions" ]; then
  echo "== generating the embedded world under $ROOT"
  $ICG world --out "$ROOT"
else
  echo "== embedded world already under $ROOT (delete it to regenerate)"
fi
echo "== extract ds=$DS"
$ICG extract --root "$ROOT" --ds "$DS"
echo "== validate ds=$DS"
$ICG validate --root "$ROOT" --ds "$DS"

echo
echo "Done in $(( $(date +%s) - started ))s. Outputs for ds=$DS:"
echo "  raw tables and covers:   $ROOT/raw/"
echo "  validated tables:        $ROOT/validated/{catalog_items,impressions}/ds=$DS/"
echo "  validation report (GX):  $ROOT/reports/ds=$DS/validation.json"
