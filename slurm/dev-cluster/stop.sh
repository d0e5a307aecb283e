#!/usr/bin/env bash
# Stop the dev cluster started by start.sh: cancel its jobs, then stop slurmd, slurmctld, slurmdbd,
# MariaDB and munged by their recorded PIDs (TERM, up to 30 s, then KILL). Idempotent. Logs and
# accounting data stay in the state folder; delete it for a fresh cluster.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
require_root "$0"

stop_timeout_s=30
started=$EPOCHREALTIME
stopped_any=false

# slurmstepd processes outlive slurmd, so jobs are cancelled while slurmctld can still do it.
if live_pid slurmctld >/dev/null; then
  jobs=$(timeout 10 squeue -h -o %F 2>/dev/null | sort -u || true)
  if [ -n "$jobs" ]; then
    echo "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs || true
    for ((tick = 0; tick < stop_timeout_s * 5; tick++)); do
      [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null || true)" ] && break
      sleep 0.2
    done
  fi
fi

for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
  daemon=${DAEMONS[i]}
  if pid=$(live_pid "$daemon"); then
    stopped_any=true
    kill -TERM "$pid" 2>/dev/null || true
    # Polls the process, not its PID file: the file goes before the process has finished exiting.
    for ((tick = 0; tick < stop_timeout_s * 5; tick++)); do
      is_daemon "$pid" "$daemon" || break
      sleep 0.2
    done
    if is_daemon "$pid" "$daemon"; then
      echo "$daemon (PID $pid) ignored SIGTERM for ${stop_timeout_s} s: sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    echo "stopped $daemon (PID $pid)"
  fi
  rm -f "$PID_DIR/$daemon.pid"
done

if $stopped_any; then
  echo "dev cluster stopped in $(elapsed_s "$started") s; logs stay in $LOG_DIR"
else
  echo "dev cluster not running (no live daemon recorded in $PID_DIR)"
fi
