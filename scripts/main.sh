#!/usr/bin/env bash
# The main job on the embedded default: generate the world and bootstrap the generator (both once),
# then run the nightly DAG for one date through Airflow (`airflow dags test`, project-local
# AIRFLOW_HOME with SQLite, no examples) and say where everything is. A second run with the next
# DS reuses the world and the bootstrap: `DS=2026-11-16 make run` (past the world's last day of logs,
# so with ICG__VALIDATION__MIN_DAY_ROWS_FRACTION=0, or validate refuses the night as incomplete).
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
  echo "   world generated in $(( $(date +%s) - started ))s"
else
  echo "== embedded world already under $ROOT (delete it to regenerate)"
fi

echo "== airflow db migrate ($AIRFLOW_HOME)"
mkdir -p "$AIRFLOW_HOME/runs"
$BIN/airflow db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -n 40 "$AIRFLOW_HOME/migrate.log"; exit 1; }

# One DAG run through Airflow, its log kept under $AIRFLOW_HOME/runs/. While it runs, the stages'
# progress lines (N of M, rate, ETA) and each stage's time are relayed from the log; at the end, the
# time of every stage.
run_dag() {
  local dag_id=$1 log="$AIRFLOW_HOME/runs/$1-$DS.log" t0=$(date +%s) rc=0 pid
  echo "== airflow dags test $dag_id $DS (log: $log)"
  $BIN/airflow dags test "$dag_id" "$DS" > "$log" 2>&1 &
  pid=$!
  tail -n +1 -F --pid="$pid" "$log" 2>/dev/null \
    | grep --line-buffered -oE "icg_core\.progress: [^[]*|stage=[a-z0-9_]+ ds=$DS done in [0-9.]+s" \
    | sed -u -E 's/^icg_core\.progress: //; s/^stage=([a-z0-9_]+) ds=[^ ]+ done in/\1 done in/; s/^stage=//; s/^/   /' || true
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ] || ! grep -q "state=success" "$log"; then
    grep -E "error:|refused|ERROR" "$log" | tail -n 20
    echo "$dag_id failed for ds=$DS; full log: $log"
    exit 1
  fi
  echo "   $dag_id succeeded in $(( $(date +%s) - t0 ))s; stage times: $(stage_times "$log")"
}

stage_times() {
  grep -oE "stage=[a-z0-9_]+ ds=$DS done in [0-9.]+s" "$1" \
    | sed -E 's/stage=([a-z0-9_]+) ds=[^ ]+ done in /\1 /' | paste -sd, - | sed 's/,/, /g'
}

# The generator is trained once (icg_bootstrap); later runs reuse it.
if [ ! -e "$ROOT/models/icg_generator/_latest" ]; then
  run_dag icg_bootstrap
else
  echo "== generator already bootstrapped under $ROOT/models/icg_generator (icg_bootstrap skipped)"
fi
run_dag icg_nightly

echo
echo "icg_nightly succeeded for ds=$DS; $(( $(date +%s) - started ))s in all."
$BIN/python scripts/summary.py --root "$ROOT" --ds "$DS"
echo "  Airflow run logs:        $AIRFLOW_HOME/runs/"
