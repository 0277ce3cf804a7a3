#!/usr/bin/env bash
# A real single-node Slurm for the Slurm-marked tests: munged, slurmctld and slurmd as
# background processes, every file under one state folder, stopped by PID.
#
#   .ci/slurm.sh start   install slurm-wlm + munge (as root, if missing), write slurm.conf,
#                        start the daemons, wait until the node takes jobs
#   .ci/slurm.sh stop    cancel every job, stop the daemons by PID
#   .ci/slurm.sh env     print the SLURM_CONF line the clients need
#
# The daemons and the jobs run as the calling user (root in CI). Nothing in /etc is changed:
# clients find this cluster through SLURM_CONF.
set -euo pipefail
STATE=${HTS_SLURM_DIR:-/tmp/hts-slurm}
CONF=$STATE/slurm.conf
export SLURM_CONF=$CONF

log() { echo "[slurm.sh] $*" >&2; }

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  if [ "$(id -u)" != 0 ]; then
    log "needs: sudo apt-get install slurm-wlm munge"; exit 1
  fi
  local t0=$SECONDS
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  log "slurm-wlm and munge installed in $((SECONDS - t0)) s"
}

write_conf() {
  local cpus mem user
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  user=$(id -un)
  mkdir -p "$STATE/state" "$STATE/spool" "$STATE/munge"
  cat >"$CONF" <<EOF
# written by .ci/slurm.sh: one node (this machine), no accounting database
ClusterName=hts-ci
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=${HTS_SLURMCTLD_PORT:-6817}
SlurmdPort=${HTS_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  install
  if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    log "already running ($CONF)"; return
  fi
  local t0=$SECONDS
  write_conf
  [ -f "$STATE/munge/munge.key" ] || mungekey -c -k "$STATE/munge/munge.key" 2>/dev/null \
    || dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  chmod 700 "$STATE/munge"; chmod 600 "$STATE/munge/munge.key"
  munged --force --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed"
  slurmctld -D -f "$CONF" >"$STATE/slurmctld.out" 2>&1 &
  echo $! >"$STATE/slurmctld.pid.sh"
  slurmd -D -f "$CONF" >"$STATE/slurmd.out" 2>&1 &
  echo $! >"$STATE/slurmd.pid.sh"
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      log "up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D %c %t')"
      log "export SLURM_CONF=$CONF"
      return
    fi
    sleep 1
  done
  log "the node did not become idle; logs:"
  tail -20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
  stop
  exit 1
}

stop() {
  if command -v scancel >/dev/null && [ -f "$CONF" ]; then
    scancel --user "$(id -un)" 2>/dev/null || true
    sleep 1
  fi
  for f in slurmd.pid.sh slurmctld.pid.sh munge/munged.pid; do
    if [ -f "$STATE/$f" ]; then
      kill "$(cat "$STATE/$f")" 2>/dev/null || true
      rm -f "$STATE/$f"
    fi
  done
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
