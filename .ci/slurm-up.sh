#!/usr/bin/env bash
# A one-node SLURM on this machine for the `slurm`-marked tests: Debian's slurmctld, slurmd, slurm-client and
# munge, started as root without systemd (CI containers have none). Accounting is off, so the profile asks
# squeue for job states. Two partitions on the one node: `cpu` (default) and `gpu` (same node, no GRES; GPU
# requests are checked in dry runs, not here). Safe to run twice: if the node already answers idle, it stops.
set -euo pipefail

NODE="$(hostname -s)"
CONF_DIR=/etc/slurm
TIMEOUT_S="${SLURM_UP_TIMEOUT_S:-60}"

node_state() {
    sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1 || true
}

if command -v sinfo >/dev/null && [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; then
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

# --- munge: a key (the package usually makes one) and its runtime folders, owned by the munge user.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.5
    done
fi
munge -n | unmunge >/dev/null || { echo "slurm-up: munged does not answer" >&2; exit 1; }

# --- slurm.conf for this node: its real CPU count, 80% of its memory (slurmd drains a node that has less
# memory than configured), no accounting, no cgroups.
CPUS="$(nproc)"
MEM_MB="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by .ci/slurm-up.sh: a one-node test cluster on $NODE.
ClusterName=hivewsi
SlurmctldHost=$NODE
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
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
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
# slurmd 22.05 reads cgroup.conf when present; none of our plugins need cgroups.
rm -f "$CONF_DIR/cgroup.conf"

# --- daemons (each forks into the background). A stale pid file from a killed run is harmless: restart both.
if ! scontrol ping 2>/dev/null | grep -q UP; then
    /usr/sbin/slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    /usr/sbin/slurmd
fi

# --- wait for the node to accept jobs; a node left down by an earlier run is resumed.
deadline=$((SECONDS + TIMEOUT_S))
while :; do
    state="$(node_state)"
    case "$state" in
        idle* | mix* | alloc*)
            echo "slurm-up: node $NODE $state (CPUs=$CPUS RealMemory=${MEM_MB}MB)"
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
