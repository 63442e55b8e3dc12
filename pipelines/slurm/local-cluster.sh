#!/bin/bash
# A one-node SLURM cluster on this machine: to try pipelines/slurm/*.sh without a cluster, and
# for `make test-slurm`. Everything it writes (slurm.conf, munge key and socket, state, spool,
# logs, pid files) stays in DIR; it touches no system configuration and installs nothing
# unless asked with `install`.
#
#   pipelines/slurm/local-cluster.sh install        # once, as root: the Debian/Ubuntu packages
#   pipelines/slurm/local-cluster.sh start [DIR]    # as root: munged, slurmctld, slurmd; waits until the node is idle
#   export SLURM_CONF=DIR/slurm.conf                # then sbatch, squeue, sinfo, scancel as usual
#   pipelines/slurm/local-cluster.sh status [DIR]   # exit 0 when all three run and the node is up
#   pipelines/slurm/local-cluster.sh stop [DIR]     # cancels the jobs, stops the daemons by their pid files
#
# DIR defaults to ${TMPDIR:-/tmp}/tsn-local-slurm. The node is this machine (its CPUs as given
# by nproc, the memory slurmd measures) in one partition `local`; CPUs and memory are
# consumable (select/cons_tres, CR_Core_Memory), so ask for what a task needs, e.g.
# `sbatch -c 1 --mem=2G --gres=none ...` on a small machine. Processes are tracked by
# proctrack/linuxproc and task/none: no cgroups or systemd needed. Ports: SLURM_LOCAL_PORT
# (slurmctld, default 6817) and the next one (slurmd).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
COMMANDS=(munged slurmctld slurmd sinfo sbatch squeue scancel scontrol)
UP_TIMEOUT=${SLURM_LOCAL_UP_TIMEOUT:-60}   # seconds for the node to become idle
STOP_TIMEOUT=15                            # seconds for each daemon (and the jobs) to stop

die() { echo "local-cluster: $*" >&2; exit 1; }
say() { echo "local-cluster: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

missing_commands() {
    local c out=()
    for c in "${COMMANDS[@]}"; do command -v "$c" >/dev/null || out+=("$c"); done
    echo "${out[*]:-}"
}

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (slurmd starts jobs as their users; apt-get installs): run it with sudo"
}

pid_of() {      # the pid in DIR/run/$1.pid while that process runs $1 (a reused pid is not), else nothing
    local f="$DIR/run/$1.pid" p comm
    [ -s "$f" ] || return 0
    p=$(cat "$f")
    comm=$(cat "/proc/$p/comm" 2>/dev/null) || return 0
    if [ "$comm" = "$1" ]; then echo "$p"; fi
}

log_tail() {
    local f
    for f in "$DIR"/log/*.log; do
        [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    return 0
}

node_state() {
    sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n 1
}

cmd_install() {
    if [ -z "$(missing_commands)" ]; then
        say "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    need_root install
    command -v apt-get >/dev/null \
        || die "no apt-get: install SLURM (slurmctld, slurmd, client commands) and munge with this system's package manager"
    say "installing ${PACKAGES[*]} (apt-get)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
    local left
    left=$(missing_commands)
    [ -z "$left" ] || die "still missing after apt-get install: $left"
}

write_conf() {
    local cpus mem port=$1
    cpus=$(nproc)
    # the memory slurmd itself measures: a node configured with more is drained
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    [ -n "$mem" ] || die "slurmd -C did not report RealMemory"
    cat > "$DIR/slurm.conf" <<EOF
# written by pipelines/slurm/local-cluster.sh: a one-node cluster on $NODE
ClusterName=tsnlocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
InactiveLimit=0
KillWait=5
MinJobAge=3600
DependencyParameters=kill_invalid_depend
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_failed() {
    say "start failed: $1 (logs in $DIR/log); stopping what was started"
    [ -z "$(pid_of slurmctld)" ] || sinfo -R >&2 2>/dev/null || true     # why a node is down
    log_tail
    cmd_stop >/dev/null 2>&1 || true
    exit 1
}

cmd_start() {
    need_root start
    local left
    left=$(missing_commands)
    [ -z "$left" ] || die "missing commands: $left. Install the packages (${PACKAGES[*]}) with: sudo $0 install"
    local d running=()
    for d in munged slurmctld slurmd; do [ -z "$(pid_of $d)" ] || running+=("$d"); done
    [ ${#running[@]} = 0 ] || die "already running in $DIR: ${running[*]}. Stop it first: $0 stop $DIR"

    local port=${SLURM_LOCAL_PORT:-6817} p
    for p in "$port" $((port + 1)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            die "port $p is in use (another slurmctld or slurmd?): stop it, or choose other ports with SLURM_LOCAL_PORT=<free port>"
        fi
    done

    mkdir -p "$DIR"/{state,spool,log,run,munge} || die "cannot create the cluster's folders in $DIR"
    chmod 755 "$DIR" "$DIR/munge"      # users other than root submit through the munge socket
    rm -f "$DIR"/log/*.log
    # a key of our own: the system's munge (if any) is left alone
    [ -s "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
    write_conf "$port"
    export SLURM_CONF="$DIR/slurm.conf"

    # from here on, a failure stops whatever was started
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" || start_failed "munged did not start"
    slurmctld -c -f "$SLURM_CONF" || start_failed "slurmctld did not start"
    slurmd -f "$SLURM_CONF" -N "$NODE" || start_failed "slurmd did not start"

    local waited=0 state=""
    while [ $waited -lt "$UP_TIMEOUT" ]; do
        state=$(node_state)
        case "$state" in idle|mix|mixed|alloc|allocated) break ;; esac
        for d in munged slurmctld slurmd; do
            [ -n "$(pid_of $d)" ] || start_failed "$d exited"
        done
        sleep 1
        waited=$((waited + 1))
    done
    if [ $waited -ge "$UP_TIMEOUT" ]; then
        start_failed "node $NODE not idle after ${UP_TIMEOUT}s (state: ${state:-no answer from slurmctld})"
    fi
    say "node $NODE is $state ($(nproc) CPUs, partition local); now run:"
    echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    [ -d "$DIR/run" ] || { say "no cluster in $DIR: nothing to stop"; return 0; }
    export SLURM_CONF="$DIR/slurm.conf"
    local d p waited
    if [ -n "$(pid_of slurmctld)" ]; then
        # jobs outlive slurmd (their slurmstepd keeps running): cancel them first
        scancel --partition=local 2>/dev/null || true
        waited=0
        while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $waited -lt $STOP_TIMEOUT ]; do
            sleep 1
            waited=$((waited + 1))
        done
        [ $waited -lt $STOP_TIMEOUT ] || say "jobs still listed after ${STOP_TIMEOUT}s: $(squeue -h -o %i | tr '\n' ' ')"
    fi
    for d in slurmd slurmctld munged; do
        p=$(pid_of $d)
        [ -n "$p" ] || { rm -f "$DIR/run/$d.pid"; continue; }
        kill -TERM "$p" 2>/dev/null || true
        waited=0
        while kill -0 "$p" 2>/dev/null && [ $waited -lt $((STOP_TIMEOUT * 5)) ]; do
            sleep 0.2
            waited=$((waited + 1))
        done
        if kill -0 "$p" 2>/dev/null; then
            say "$d (pid $p) did not stop in ${STOP_TIMEOUT}s: killing it"
            kill -KILL "$p" 2>/dev/null || true
        fi
        rm -f "$DIR/run/$d.pid"
        say "stopped $d (pid $p)"
    done
}

cmd_status() {
    [ -d "$DIR/run" ] || { echo "no cluster in $DIR"; return 1; }
    export SLURM_CONF="$DIR/slurm.conf"
    local d p ok=0 state
    for d in munged slurmctld slurmd; do
        p=$(pid_of $d)
        if [ -n "$p" ]; then echo "$d: running (pid $p)"; else echo "$d: not running"; ok=1; fi
    done
    if [ -z "$(pid_of slurmctld)" ]; then return 1; fi
    state=$(node_state)
    echo "node $NODE: ${state:-unknown}"
    case "$state" in idle|mix|mixed|alloc|allocated) ;; *) ok=1 ;; esac
    squeue 2>/dev/null || true
    return $ok
}

[ $# -ge 1 ] || usage
ACTION=$1
DIR=${2:-${TMPDIR:-/tmp}/tsn-local-slurm}
[ "$ACTION" != start ] || mkdir -p "$DIR" || die "cannot create $DIR"
[ ! -d "$DIR" ] || DIR=$(cd "$DIR" && pwd)     # absolute: slurm.conf names its folders
NODE=$(hostname -s)
case "$ACTION" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
