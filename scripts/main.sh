#!/usr/bin/env bash
# The main job on the embedded default: generate the world (once), then run the nightly DAG for one
# date through Airflow (`airflow dags test`, project-local AIRFLOW_HOME with SQLite, no examples)
# and say where everything is.
# Environment: ROOT (object root, default ./data), DS (logical date; default: the day after the
# world's last day of logs), ICG_CONFIG (config file).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${ROOT:-./data}"
BIN=.venv/bin
DS="${DS:-$($BIN/python -c 'import datetime as d; from icg_core.config import load_config; w = load_config().world; print(w.start_date + d.timedelta(days=w.days))')}"

export AIRFLOW_HOME="${AIRFLOW_HOME:-$PWD/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export ICG__STORAGE__ROOT="$ROOT"

started=$(date +%s)
if [ ! -e "$ROOT/raw/impressions" ]; then
  echo "== generating the embedded world under $ROOT"
  $BIN/icg world --out "$ROOT"
else
  echo "== embedded world already under $ROOT (delete it to regenerate)"
fi

echo "== airflow db migrate ($AIRFLOW_HOME)"
mkdir -p "$AIRFLOW_HOME/runs"
$BIN/airflow db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -n 40 "$AIRFLOW_HOME/migrate.log"; exit 1; }

echo "== airflow dags test icg_nightly $DS"
run_log="$AIRFLOW_HOME/runs/icg_nightly-$DS.log"
if ! $BIN/airflow dags test icg_nightly "$DS" > "$run_log" 2>&1; then
  grep -E "error:|refused|ERROR" "$run_log" | tail -n 20
  echo "icg_nightly failed for ds=$DS; full log: $run_log"
  exit 1
fi
grep -q "state=success" "$run_log" || { tail -n 40 "$run_log"; echo "icg_nightly did not succeed; log: $run_log"; exit 1; }

echo
echo "icg_nightly succeeded for ds=$DS in $(( $(date +%s) - started ))s."
echo "  raw tables and covers:   $ROOT/raw/"
echo "  validated tables:        $ROOT/validated/{catalog_items,impressions}/ds=$DS/"
echo "  validation report (GX):  $ROOT/reports/ds=$DS/validation.json"
echo "  Airflow run log:         $run_log"
