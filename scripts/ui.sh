#!/usr/bin/env bash
# The Airflow UI for this checkout, on 127.0.0.1 only: `make ui` (PORT=8080 by default).
# Starts Airflow's components (scheduler, DAG processor, triggerer, API server and UI) with the
# project's settings: the venv on PATH, a project-local AIRFLOW_HOME, this repository's DAGs, the ICG
# GPU pool, executor and API workers sized to this machine, nothing listening beyond 127.0.0.1 (the
# API server binds loopback; the log servers are off: with the LocalExecutor the UI reads the log
# files directly). Not `airflow standalone`: it binds a log server on every interface and stops its
# components on SIGINT only. Ctrl-C or SIGTERM stops every component; nothing outlives the script.
# DAGs are paused when first seen (Airflow's default): unpause one to run it, its backfills included.
# Environment: PORT, ROOT (object root, default ./data), AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER,
# ICG_CONFIG and any ICG__SECTION__FIELD (see `icg config show`).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$REPO/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export ICG__STORAGE__ROOT="${ICG__STORAGE__ROOT:-$(realpath -m "${ROOT:-./data}")}"
export PORT="${PORT:-8080}"
CPUS=$(nproc)
# Loopback only, and no login: nobody else on the network reaches it.
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$PORT" AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
# Sized to the machine: the default LocalExecutor forks 32 workers and the API server 4.
export AIRFLOW__CORE__EXECUTOR=LocalExecutor AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-$CPUS}"
export AIRFLOW__API__WORKERS=1 AIRFLOW__SCHEDULER__PARSING_PROCESSES=1 AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1

mkdir -p "$AIRFLOW_HOME"
echo "== airflow db migrate ($AIRFLOW_HOME)"
airflow db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -n 40 "$AIRFLOW_HOME/migrate.log"; exit 1; }
pool=$(icg config show --field operations.gpu_pool)
slots=$(icg config show --field operations.gpu_pool_slots)
airflow pools set "$pool" "$slots" "ICG stages that hold a GPU (operations.gpu_pool)" > /dev/null
echo "== Airflow UI: http://127.0.0.1:$PORT  (DAGs: $AIRFLOW__CORE__DAGS_FOLDER, root: $ICG__STORAGE__ROOT)"

# The components in their own session: one exiting stops the others (`kill 0`), and stopping the
# script stops the whole process group, their workers included.
setsid bash -c '
  airflow scheduler --skip-serve-logs &
  airflow dag-processor &
  airflow triggerer --skip-serve-logs &
  airflow api-server --host 127.0.0.1 --port "$PORT" --workers 1 &
  wait -n
  echo "an Airflow component exited: stopping the others" >&2
  kill 0
' &
group=$!
descendants() {  # every process below $1, recursively
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
running() {  # those of the given pids still running (an exited zombie waiting to be reaped is not)
  local pid state
  for pid in "$@"; do
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || continue
    [[ $state == Z* ]] || echo "$pid"
  done
}
stop() {
  trap - TERM INT
  echo "== stopping Airflow (process group $group)"
  # A task's supervisor (`airflow worker -- ...`) starts a session of its own, which a signal to the
  # group misses: every descendant is signalled by pid too, recorded before the group goes away.
  local family
  family=$(descendants "$group")
  # shellcheck disable=SC2086  # one pid per word
  kill -TERM -- "-$group" $family 2>/dev/null || true
  for _ in $(seq 1 30); do
    # shellcheck disable=SC2086
    if ! kill -0 -- "-$group" 2>/dev/null && [ -z "$(running $family)" ]; then exit 0; fi
    sleep 1
  done
  # shellcheck disable=SC2086
  kill -KILL -- "-$group" $(running $family) 2>/dev/null || true
  exit 0
}
trap stop TERM INT
wait "$group" || true
stop
