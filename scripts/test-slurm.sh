#!/usr/bin/env bash
# A single-node Slurm for the tests: munge, slurmctld and slurmd on 127.0.0.1 only, with
# configuration, state and logs in DIR. Prints the slurm.conf to use (as SLURM_CONF).
#   scripts/test-slurm.sh start DIR    start it (needs slurmctld slurmd slurm-client munge)
#   scripts/test-slurm.sh stop DIR     stop it, by the pids it recorded
set -euo pipefail
command=$1
dir=$2
node=$(hostname)
case "$command" in
start)
    mkdir -p "$dir/state" "$dir/spool" /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 700 "$dir"
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chmod 400 /etc/munge/munge.key
    munged --force --pid-file="$dir/munged.pid" --socket=/run/munge/munge.socket.2
    cat > "$dir/slurm.conf" <<CONFIG
ClusterName=offload-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=32 State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:32
CONFIG
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF" -N "$node"
    for _ in $(seq 150); do
        # Up: the node takes work (idle, or already running some).
        if sinfo -h -o %t 2>/dev/null | grep -qxE "idle|mix|alloc"; then
            echo "$SLURM_CONF"
            exit 0
        fi
        sleep 0.2
    done
    echo "slurm did not come up; its logs:" >&2
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    sinfo >&2 || true
    exit 1
    ;;
stop)
    for daemon in slurmd slurmctld munged; do
        if [ -f "$dir/$daemon.pid" ]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
            rm -f "$dir/$daemon.pid"
        fi
    done
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
