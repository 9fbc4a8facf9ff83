#!/usr/bin/env bash
# A one-node SLURM on this machine for the `slurm`-marked tests: Debian's slurmctld, slurmd, slurm-client and
# munge, started as root without systemd (CI containers have none). Accounting is off, so the profile asks
# squeue for job states. Two partitions on the one node, `cpu` (default) and `gpu`, and one stand-in GPU (see
# gres.conf below). Safe to run twice: when the node already answers idle with this configuration, it stops.
set -euo pipefail

NODE="$(hostname -s)"
CONF_DIR=/etc/slurm
SPOOL=/var/spool/slurmd
TIMEOUT_S="${SLURM_UP_TIMEOUT_S:-60}"
HERE="$(cd "$(dirname "$0")" && pwd)"

node_state() {
    sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1 || true
}

# --- the configuration for this node: its real CPU count, 80% of its memory (slurmd drains a node that has
# less memory than configured), no accounting, no cgroups, and loopback addresses (no name resolution needed).
CPUS="$(nproc)"
MEM_MB="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"
SLURM_CONF="# Written by .ci/slurm-up.sh: a one-node test cluster on $NODE.
ClusterName=hivewsi
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
NodeName=$NODE NodeAddr=127.0.0.1 Gres=gpu:1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP"
# One stand-in GPU: slurmd counts a gpu GRES only with a File, so an empty file plays the device. sbatch then
# accepts the profile's --gpus/--cpus-per-gpu requests and `scontrol show job` records them (TresPerJob), while
# the job runs on the CPU: the file is no /dev/nvidiaN, so no CUDA_VISIBLE_DEVICES is handed out.
GRES_CONF="NodeName=$NODE Name=gpu File=$SPOOL/stand-in-gpu0"

if command -v sinfo >/dev/null && [[ "$(node_state)" =~ ^(idle|mix|alloc) ]] \
    && [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" = "$SLURM_CONF" ] \
    && [ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" = "$GRES_CONF" ]; then
    echo "slurm-up: node $NODE already up ($(node_state))"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    echo "slurm-up: installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# Daemons of an earlier start read another configuration: stop them (by pid file) before rewriting it.
"$HERE/slurm-down.sh" >/dev/null

# --- munge: a key (the package usually makes one) and its runtime folders, owned by the munge user.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
done
munge -n | unmunge >/dev/null || { echo "slurm-up: munged does not answer" >&2; exit 1; }

mkdir -p "$CONF_DIR" /var/spool/slurmctld "$SPOOL" /var/log/slurm
touch "$SPOOL/stand-in-gpu0"
printf '%s\n' "$SLURM_CONF" >"$CONF_DIR/slurm.conf"
printf '%s\n' "$GRES_CONF" >"$CONF_DIR/gres.conf"
# slurmd 22.05 reads cgroup.conf when present; none of our plugins need cgroups.
rm -f "$CONF_DIR/cgroup.conf"

# --- daemons (each forks into the background).
/usr/sbin/slurmctld
/usr/sbin/slurmd

# --- wait for the node to accept jobs; a node left down or drained by an earlier run is resumed.
deadline=$((SECONDS + TIMEOUT_S))
while :; do
    state="$(node_state)"
    case "$state" in
        idle* | mix* | alloc*)
            echo "slurm-up: node $NODE $state (CPUs=$CPUS RealMemory=${MEM_MB}MB, partitions cpu and gpu)"
            exit 0
            ;;
        down* | drain* | drng*)
            scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "slurm-up: node $NODE not idle after ${TIMEOUT_S}s (state: '${state:-none}')" >&2
        sinfo -N -l >&2 || true
        tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
        exit 1
    fi
    sleep 1
done
