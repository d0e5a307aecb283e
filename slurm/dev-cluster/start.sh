#!/usr/bin/env bash
# Start a real single-node SLURM with accounting (munged, MariaDB, slurmdbd, slurmctld, slurmd) as
# root without systemd, for CI and for trying launcher=slurm on one machine. Installs the Debian
# packages when they are missing. Idempotent: when the cluster is already up it says so and exits 0.
#
# Environment:
#   GFN_BENCH_SLURM_DIR      state folder: PIDs, logs, slurmctld state, MariaDB data (default /tmp/gfn-bench-slurm)
#   GFN_BENCH_SLURM_CPUS     CPUs the node offers (default: all the machine's); more than the machine
#                            has lets more single-CPU jobs run at once
#   GFN_BENCH_SLURM_TIMEOUT  seconds to wait for each daemon and for the check job (default 60)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
require_root "$0"

PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
MARIADB_SOCKET=/run/mysqld/mysqld.sock
timeout_s=${GFN_BENCH_SLURM_TIMEOUT:-60}
started=$EPOCHREALTIME
node=$(hostname -s)

fail() {
  echo "start.sh: $*" >&2
  exit 1
}

[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || fail "GFN_BENCH_SLURM_TIMEOUT=$timeout_s: give a whole number of seconds, e.g. 60"

# Polls "$@" every 0.2 s until it succeeds. On timeout: names the log, shows its tail, stops what
# was started (so the next start begins clean) and exits 1.
wait_for() {
  local what=$1 log=$2
  shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "start.sh: $what not ready after ${timeout_s} s; see $log (last lines below)" >&2
      tail -n 20 "$log" >&2 2>/dev/null || true
      "$HERE/stop.sh" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

cluster_up() {
  local daemon
  for daemon in mariadbd slurmdbd slurmctld slurmd; do
    live_pid "$daemon" >/dev/null || return 1
  done
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && timeout 10 sinfo -h >/dev/null 2>&1
}

any_daemon_recorded() {
  local daemon
  for daemon in "${DAEMONS[@]}"; do
    live_pid "$daemon" >/dev/null && return 0
  done
  return 1
}

install_missing_packages() {
  local package missing=()
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]} (log: $LOG_DIR/apt.log)"
  # The packages' maintainer scripts would start their daemons through init scripts; policy-rc.d
  # exit code 101 forbids that (start.sh starts them itself). Containers often ship one already.
  local own_policy=false
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=true
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  } >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
  if $own_policy; then rm -f /usr/sbin/policy-rc.d; fi
  if ((rc)); then
    tail -n 20 "$LOG_DIR/apt.log" >&2
    fail "installing ${missing[*]} failed (apt exit $rc); see $LOG_DIR/apt.log"
  fi
}

# Copies template $1 to $2 with the placeholders filled in, refusing to replace a config that
# start.sh did not write (a real SLURM installation's).
write_config() {
  local template=$1 target=$2 mode=$3
  if [ -e "$target" ] && ! head -n 1 "$target" | grep -qF "$CONFIG_MARKER"; then
    fail "$target was not written by the dev cluster; move it away (e.g. to $target.orig) to use the dev cluster"
  fi
  sed -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@NODE@|$node|g" \
    -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY_MB@|$memory_mb|g" "$template" >"$target"
  chmod "$mode" "$target"
}

start_munged() {
  install -d -o munge -g munge -m 0755 /run/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "munged already running outside the dev cluster: using it"
    return
  fi
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
  runuser -u munge -- munged </dev/null >>"$LOG_DIR/munged.out" 2>&1
  cp /run/munge/munged.pid "$PID_DIR/munged.pid"
  wait_for "munged" /var/log/munge/munged.log sh -c 'munge -n | unmunge'
}

start_mariadb() {
  local datadir=$STATE_DIR/mysql log=$LOG_DIR/mariadb.log
  install -d -o mysql -g root -m 0755 /run/mysqld
  if mysqladmin --socket="$MARIADB_SOCKET" ping >/dev/null 2>&1; then
    fail "another MariaDB/MySQL server answers on $MARIADB_SOCKET; stop it first (slurmdbd would store accounting there)"
  fi
  install -o mysql -g mysql -m 0640 /dev/null "$log"
  if [ ! -d "$datadir/mysql" ]; then
    install -d -o mysql -g mysql -m 0750 "$datadir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" --skip-test-db \
      --auth-root-authentication-method=socket >>"$LOG_DIR/mariadb-install.log" 2>&1 ||
      fail "initializing MariaDB in $datadir failed; see $LOG_DIR/mariadb-install.log"
  fi
  # Unix socket only; the lock wait is the value slurmdbd asks for. setsid detaches it from the
  # caller's terminal and pipes (CI reads this script's output until every writer is gone).
  setsid mariadbd --no-defaults --user=mysql --datadir="$datadir" --socket="$MARIADB_SOCKET" \
    --pid-file=/run/mysqld/mariadbd.pid --skip-networking --log-error="$log" \
    --innodb-lock-wait-timeout=900 </dev/null >>"$LOG_DIR/mariadb.out" 2>&1 &
  echo $! >"$PID_DIR/mariadbd.pid"
  wait_for "MariaDB" "$log" mysqladmin --socket="$MARIADB_SOCKET" ping
}

# slurmdbd, slurmctld and slurmd daemonize themselves and write the PID files named in the configs.
start_slurm_daemon() {
  "$1" </dev/null >>"$LOG_DIR/$1.out" 2>&1 || fail "$1 did not start; see $LOG_DIR/$1.log and $LOG_DIR/$1.out"
}

# The cluster, its account and root's association: profiles may name --account=gfn-bench.
register_accounting() {
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" ||
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
  sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" ||
    sacctmgr -i -Q add account "$ACCOUNT" Cluster="$CLUSTER" Description="gfn-bench dev cluster" \
      Organization=gfn-bench >/dev/null
  sacctmgr -n -P list association account="$ACCOUNT" user=root format=user | grep -qx root ||
    sacctmgr -i -Q add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
}

node_ready() {
  [[ $(sinfo -h -n "$node" -o %t) =~ ^(idle|mix|alloc)$ ]]
}

job_completed() {
  [ "$(sacct -n -X -P -j "$1" -o State 2>/dev/null)" = COMPLETED ]
}

if cluster_up; then
  echo "dev cluster already running (state: $STATE_DIR; stop: $HERE/stop.sh)"
  exit 0
fi
mkdir -p "$STATE_DIR"
chmod 755 "$STATE_DIR"
mkdir -p "$PID_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
if any_daemon_recorded; then
  echo "dev cluster partly running: stopping what is left first"
  "$HERE/stop.sh"
fi

install_missing_packages
hardware=$(slurmd -C | head -n 1) # NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105
memory_mb=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
cpus=${GFN_BENCH_SLURM_CPUS:-$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")}
[[ $cpus =~ ^[1-9][0-9]*$ ]] || fail "GFN_BENCH_SLURM_CPUS=$cpus: give a whole number of CPUs, e.g. 4"
mkdir -p /etc/slurm
write_config "$HERE/slurm.conf.in" /etc/slurm/slurm.conf 644
write_config "$HERE/slurmdbd.conf.in" /etc/slurm/slurmdbd.conf 600

start_munged
start_mariadb
start_slurm_daemon slurmdbd
wait_for "slurmdbd" "$LOG_DIR/slurmdbd.log" sacctmgr -n list cluster
register_accounting
start_slurm_daemon slurmctld
start_slurm_daemon slurmd
wait_for "node $node" "$LOG_DIR/slurmd.log" node_ready
check_job=$(sbatch --parsable -J dev-cluster-check -o /dev/null --wrap true) ||
  fail "sbatch refused the check job; see $LOG_DIR/slurmctld.log"
wait_for "check job $check_job (COMPLETED in sacct)" "$LOG_DIR/slurmctld.log" job_completed "$check_job"

cat <<EOF
dev cluster up in $(elapsed_s "$started") s: cluster $CLUSTER, node $node ($cpus CPUs, $memory_mb MB),
  partitions debug (default) and urgent (preempts debug jobs), account $ACCOUNT
state: $STATE_DIR (PIDs in pids/, slurmctld state, slurmd spool, MariaDB data in mysql/)
logs:  $LOG_DIR/{slurmctld,slurmd,slurmdbd,mariadb}.log, munged: /var/log/munge/munged.log
configs: /etc/slurm/slurm.conf, /etc/slurm/slurmdbd.conf
stop:  $HERE/stop.sh
EOF
