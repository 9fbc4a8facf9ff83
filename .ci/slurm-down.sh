#!/usr/bin/env bash
# Stop the one-node SLURM that .ci/slurm-up.sh started: slurmd, slurmctld, then munged. Each daemon is ended by
# the pid in its own pid file, never by name, so other processes on the machine are left alone.
set -uo pipefail

stop_pidfile() {
    local name="$1" pidfile="$2"
    [ -s "$pidfile" ] || return 0
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "slurm-down: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
stop_pidfile munged /run/munge/munged.pid
exit 0
