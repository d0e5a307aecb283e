# Sourced by start.sh and stop.sh: where the dev cluster keeps its state and how its daemons are found.
# GFN_BENCH_SLURM_DIR moves the state folder (default /tmp/gfn-bench-slurm); it must be the same for
# start.sh and stop.sh.
STATE_DIR=$(realpath -m "${GFN_BENCH_SLURM_DIR:-/tmp/gfn-bench-slurm}")
PID_DIR=$STATE_DIR/pids
LOG_DIR=$STATE_DIR/log
CLUSTER=gfnbench
ACCOUNT=gfn-bench
# The marker in the first line of the configs start.sh writes: it never overwrites anyone else's.
CONFIG_MARKER="Written by gfn-bench slurm/dev-cluster/start.sh"
# Start order; stop.sh goes in reverse. Each name is also the daemon's /proc/<pid>/comm.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

# Succeeds when process $1 is alive and is daemon $2: a PID file left by a crash may name an
# unrelated process by now. PID 1 here may not reap orphans, so a zombie counts as stopped.
is_daemon() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] &&
    [ "$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" != Z ]
}

# Prints the recorded PID of daemon $1 when that process is alive and still that daemon. The
# daemons delete their PID files as they exit, so the file may vanish while it is read.
live_pid() {
  local pid
  pid=$(cat "$PID_DIR/$1.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && is_daemon "$pid" "$1" && echo "$pid"
}

# Seconds since $1 (an $EPOCHREALTIME value), one decimal.
elapsed_s() {
  awk -v since="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - since }'
}

require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1: run it as root (sudo $1): the dev cluster runs system daemons as root" >&2
    exit 1
  fi
}
