#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying (and testing) `medseg-bench sweep --launcher slurm`.
#
#   scripts/slurm_local.sh start STATE_DIR   # install if missing, configure, start munged, slurmctld, slurmd
#   export SLURM_CONF=STATE_DIR/slurm.conf   # then sbatch/squeue/scancel (and submitit) use this cluster
#   scripts/slurm_local.sh stop STATE_DIR    # stop the three daemons (by the pids recorded in STATE_DIR)
#
# Requirements: root (the daemons run as SlurmUser=root), Debian/Ubuntu packages `slurm-wlm` and `munge`
# (installed with apt-get when missing). Everything else lives in STATE_DIR: the munge key and socket, the
# config, spool and state folders, logs and pid files; nothing in /etc is changed. Ports: $SLURMCTLD_PORT
# (default 16817) and $SLURMD_PORT (default 16818). The node is this host with all its CPUs and most of
# its memory; one partition `debug`. No cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none),
# so it also works in containers. A cancelled job gets SIGTERM and, KillWait=5 seconds later, SIGKILL.
# Job credentials live 20 s (cred_expire, default 120): a requeued job waits that long before it starts
# again, while the node still refuses its revoked credential.
set -euo pipefail

usage() { echo "usage: $0 start|stop STATE_DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
state=$(mkdir -p "$2" && cd "$2" && pwd)

stop() {
    for name in slurmd slurmctld munged; do
        pidfile="$state/$name.pid"
        if [[ -s $pidfile ]]; then
            pid=$(cat "$pidfile")
            if kill "$pid" 2>/dev/null; then
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$pidfile"
        fi
    done
}

start() {
    if [[ $(id -u) -ne 0 ]]; then echo "$0: must run as root" >&2; exit 1; fi
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        echo "installing slurm-wlm and munge with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
    mkdir -p "$state/ctld" "$state/spool" "$state/log"
    [[ -s $state/munge.key ]] || dd if=/dev/urandom of="$state/munge.key" bs=1024 count=1 status=none
    chmod 400 "$state/munge.key"
    cat > "$state/slurm.conf" <<CONF
ClusterName=medseg-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
AuthType=auth/munge
AuthInfo=socket=$state/munge.socket,cred_expire=20
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=60
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    munged --force --socket="$state/munge.socket" --key-file="$state/munge.key" \
        --pid-file="$state/munged.pid" --log-file="$state/log/munged.log" --seed-file="$state/munge.seed"
    SLURM_CONF=$state/slurm.conf slurmctld -c -f "$state/slurm.conf"
    SLURM_CONF=$state/slurm.conf slurmd -f "$state/slurm.conf"
    for _ in $(seq 120); do
        if SLURM_CONF=$state/slurm.conf sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "SLURM is up: export SLURM_CONF=$state/slurm.conf"
            return 0
        fi
        sleep 0.5
    done
    echo "$0: SLURM did not come up; logs in $state/log" >&2
    stop
    exit 1
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
