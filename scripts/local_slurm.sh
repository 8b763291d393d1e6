#!/usr/bin/env bash
# Start / stop / query a throw-away one-node Slurm cluster on this machine.
#
#   scripts/local_slurm.sh start  [STATE_DIR]   install slurm-wlm + munge if needed, start
#                                               munged, slurmctld and slurmd, wait until
#                                               the node is idle
#   scripts/local_slurm.sh stop   [STATE_DIR]   cancel jobs, stop slurmd + slurmctld (and
#                                               munged if this script started it)
#   scripts/local_slurm.sh status [STATE_DIR]   print sinfo; exit 1 if the cluster is down
#
# STATE_DIR defaults to ${DGLREC_SLURM_DIR:-/tmp/dglrec-slurm}. It holds slurm.conf, the
# state/spool directories, logs, pid files and env.sh (`export SLURM_CONF=...`).
# `start` prints the export line on stdout (all other messages go to stderr), so
#   eval "$(scripts/local_slurm.sh start)"
# leaves SLURM_CONF set in the calling shell; `source STATE_DIR/env.sh` does the same.
#
# Needs root (Debian/Ubuntu with apt-get, or slurm + munge already installed) and no
# systemd. Exit codes: 0 ok, 1 failure / not running (status), 2 usage, 3 cannot work here.
# Tested with Debian 12 slurm-wlm 22.05.8.
set -uo pipefail

export PATH="/usr/sbin:/sbin:/usr/bin:/bin:${PATH:-}"

PROG="local_slurm.sh"
START_TIMEOUT="${DGLREC_SLURM_START_TIMEOUT:-60}"
CTLD_PORT="${DGLREC_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${DGLREC_SLURM_SLURMD_PORT:-6818}"
CRED_EXPIRE="${DGLREC_SLURM_CRED_EXPIRE:-20}"

log() { echo "[$PROG] $*" >&2; }
die() { echo "[$PROG] error: $*" >&2; exit "${2:-1}"; }
cannot() { echo "[$PROG] cannot run a local Slurm cluster here: $*" >&2; exit 3; }

usage() {
  echo "usage: $PROG {start|stop|status} [STATE_DIR]" >&2
  exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
CMD="$1"
STATE_DIR="${2:-${DGLREC_SLURM_DIR:-/tmp/dglrec-slurm}}"
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$PWD/$STATE_DIR" ;; esac
STATE_DIR="${STATE_DIR%/}"
CONF="$STATE_DIR/slurm.conf"
CTLD_PID="$STATE_DIR/run/slurmctld.pid"
SLURMD_PID="$STATE_DIR/run/slurmd.pid"
MUNGE_MARK="$STATE_DIR/run/munged.started-by-local_slurm"
MUNGE_SOCKET="/run/munge/munge.socket.2"

# ---------------------------------------------------------------------------- helpers
# A process counts as alive if it exists and is not a zombie (daemons are reparented to
# PID 1, which in some containers/VMs reaps them only lazily).
alive() {
  local st
  st="$(sed 's/.*) //' 2>/dev/null <"/proc/$1/stat" | cut -d' ' -f1)" || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

live_pgrep() {  # live_pgrep NAME -> pids of non-zombie processes named exactly NAME
  local p
  for p in $(pgrep -x "$1" 2>/dev/null); do alive "$p" && echo "$p"; done
  return 0
}

pid_alive() {  # pid_alive PIDFILE NAME -> 0 if the pid in PIDFILE is a live NAME process
  local f="$1" name="$2" pid
  [[ -s "$f" ]] || return 1
  pid="$(tr -dc '0-9' 2>/dev/null <"$f")"
  [[ -n "$pid" ]] && alive "$pid" || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

pidof_file() { local p; p="$(tr -dc '0-9' 2>/dev/null <"$1")"; [[ -n "$p" ]] && echo "$p"; }

# pids of NAME processes that were started with our config file (fallback if pid file lost)
pids_with_conf() {
  local name="$1" p
  for p in $(live_pgrep "$name"); do
    if tr '\0' '\n' 2>/dev/null <"/proc/$p/cmdline" | grep -xF "$CONF" >/dev/null ||
       tr '\0' '\n' 2>/dev/null <"/proc/$p/environ" | grep -xF "SLURM_CONF=$CONF" >/dev/null; then
      echo "$p"
    fi
  done
}

daemon_pids() {  # daemon_pids NAME PIDFILE
  { pid_alive "$2" "$1" && pidof_file "$2"; pids_with_conf "$1"; } | sort -u
}

wait_gone() {  # wait_gone SECONDS PID... -> 0 when all pids are gone
  local t="$1"; shift
  local end=$((SECONDS + t)) p alive
  while :; do
    alive=0
    for p in "$@"; do alive "$p" && alive=1; done
    [[ $alive -eq 0 ]] && return 0
    [[ $SECONDS -ge $end ]] && return 1
    sleep 0.5
  done
}

stop_pids() {  # stop_pids LABEL PID... : TERM, wait 15 s, then KILL
  local label="$1"; shift
  [[ $# -gt 0 ]] || return 0
  log "stopping $label (pid $*)"
  kill -TERM "$@" 2>/dev/null
  if ! wait_gone 15 "$@"; then
    log "$label did not exit after SIGTERM, sending SIGKILL"
    kill -KILL "$@" 2>/dev/null
    wait_gone 5 "$@"
  fi
}

munge_works() {
  command -v munge >/dev/null && command -v unmunge >/dev/null || return 1
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

ctld_up() { SLURM_CONF="$CONF" scontrol ping 2>/dev/null | grep 'is UP' >/dev/null; }

node_state() { SLURM_CONF="$CONF" sinfo -h -N -o %T 2>/dev/null | head -n1; }

require_root() {
  [[ "$(id -u)" -eq 0 ]] || cannot "must run as root (uid $(id -u)); munged/slurmd need root"
}

have_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v sinfo >/dev/null && command -v munged >/dev/null
}

# ---------------------------------------------------------------------------- install
ensure_packages() {
  if have_slurm; then return 0; fi
  command -v apt-get >/dev/null ||
    cannot "slurm binaries (slurmctld, slurmd, munged) not found and no apt-get to install them"
  log "installing slurm-wlm and munge with apt-get (takes a minute or two)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq slurm-wlm munge >&2; then
    log "apt-get install failed; running apt-get update and retrying"
    apt-get update -qq >&2 || true
    apt-get install -y -qq slurm-wlm munge >&2 ||
      cannot "apt-get install slurm-wlm munge failed"
  fi
  have_slurm || cannot "slurm-wlm/munge installed but slurmctld/slurmd/munged still not on PATH"
}

# ---------------------------------------------------------------------------- munge
ensure_munge() {
  if munge_works; then return 0; fi
  id munge >/dev/null 2>&1 || die "user 'munge' does not exist (broken munge package?)"
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key --force >&2 ||
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    elif [[ -x /usr/sbin/create-munge-key ]]; then
      /usr/sbin/create-munge-key -f >&2
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/log/munge
  chmod 0711 /var/lib/munge
  chmod 0755 /run/munge
  chmod 0400 /etc/munge/munge.key

  # a munged that is running but not answering (or a stale socket/lock) blocks a new one
  local old
  old="$(live_pgrep munged | tr '\n' ' ')"
  if [[ -n "$old" ]]; then
    die "munged is running (pid $old) but 'munge -n | unmunge' fails; fix or stop it first"
  fi
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" /run/munge/munged.pid

  log "starting munged"
  if ! runuser -u munge -- /usr/sbin/munged >&2; then
    log "munged refused to start; retrying with --force"
    runuser -u munge -- /usr/sbin/munged --force >&2 || die "could not start munged (see /var/log/munge/munged.log)"
  fi
  local end=$((SECONDS + 15))
  until munge_works; do
    [[ $SECONDS -lt $end ]] || die "munged started but 'munge -n | unmunge' still fails (see /var/log/munge/munged.log)"
    sleep 0.5
  done
  mkdir -p "$STATE_DIR/run"
  live_pgrep munged | head -n1 >"$MUNGE_MARK"
}

# ---------------------------------------------------------------------------- config
write_conf() {
  local host cpus mem_total real_mem def_mem
  host="$(hostname -s 2>/dev/null || hostname)"
  cpus="$(nproc --all 2>/dev/null || nproc)"
  # RealMemory as reported by slurmd -C (MiB), falling back to /proc/meminfo
  mem_total="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
  [[ -n "$mem_total" ]] || mem_total="$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)"
  # leave 5% (at least 256 MiB) headroom; a node whose RealMemory exceeds reality is drained
  real_mem=$((mem_total - (mem_total / 20 > 256 ? mem_total / 20 : 256)))
  [[ $real_mem -ge 256 ]] || real_mem=$((mem_total > 1 ? mem_total - 1 : 1))
  def_mem=$((real_mem / cpus)); [[ $def_mem -le 1024 ]] || def_mem=1024

  mkdir -p "$STATE_DIR"/{state,spool,log,run}
  chmod 0755 "$STATE_DIR" "$STATE_DIR"/{state,spool,log,run}
  local tmp="$CONF.tmp.$$"
  cat >"$tmp" <<EOF
# Generated by scripts/local_slurm.sh -- one-node test cluster. Edits are overwritten on start.
ClusterName=dglrec
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=${CRED_EXPIRE}
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=${def_mem}
SchedulerType=sched/backfill
# small cluster: rescan pending jobs often (requeued jobs become eligible after cred_expire)
SchedulerParameters=sched_interval=5,bf_interval=5
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
JobRequeue=1
# reject impossible requests (too many nodes/CPUs) at submit time instead of pending forever
EnforcePartLimits=ALL
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
StateSaveLocation=${STATE_DIR}/state
SlurmdSpoolDir=${STATE_DIR}/spool
SlurmctldLogFile=${STATE_DIR}/log/slurmctld.log
SlurmdLogFile=${STATE_DIR}/log/slurmd.log
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; else mv -f "$tmp" "$CONF"; fi
  echo "export SLURM_CONF=$CONF" >"$STATE_DIR/env.sh"
}

# ---------------------------------------------------------------------------- commands
print_env() {
  echo "export SLURM_CONF=$CONF"
  log "cluster is up: $(SLURM_CONF="$CONF" sinfo -h -o '%P %D %T %c cpus %m MiB' 2>/dev/null | head -n1)"
  log "use it with:  source $STATE_DIR/env.sh   (or: export SLURM_CONF=$CONF)"
  log "logs: $STATE_DIR/log/   stop with: $0 stop $STATE_DIR"
}

cmd_start() {
  require_root
  ensure_packages
  local t0=$SECONDS p

  if [[ -f "$CONF" ]] && pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd &&
     ctld_up && [[ "$(node_state)" == idle || "$(node_state)" == mixed || "$(node_state)" == allocated ]]; then
    log "cluster from $STATE_DIR is already running"
    print_env
    return 0
  fi

  local d other
  for d in slurmctld slurmd; do
    other=""
    for p in $(live_pgrep "$d"); do
      grep -qxF "$p" <<<"$(pids_with_conf "$d")" || other="$other $p"
    done
    [[ -z "$other" ]] || die "another $d (pid$other) not using $CONF is running (different STATE_DIR?); stop it first or set DGLREC_SLURM_CTLD_PORT/DGLREC_SLURM_SLURMD_PORT"
  done

  ensure_munge
  write_conf
  export SLURM_CONF="$CONF"

  if [[ -z "$(daemon_pids slurmctld "$CTLD_PID")" ]]; then
    log "starting slurmctld"
    slurmctld -f "$CONF" >&2 || die "slurmctld failed to start; see $STATE_DIR/log/slurmctld.log"
  else
    log "slurmctld already running"
  fi
  local end=$((SECONDS + START_TIMEOUT))
  until ctld_up; do
    if [[ $SECONDS -ge $end ]]; then
      tail -n 20 "$STATE_DIR/log/slurmctld.log" >&2 2>/dev/null
      die "slurmctld not answering after ${START_TIMEOUT}s; see $STATE_DIR/log/slurmctld.log"
    fi
    sleep 0.5
  done

  if [[ -z "$(daemon_pids slurmd "$SLURMD_PID")" ]]; then
    log "starting slurmd"
    slurmd -f "$CONF" >&2 || die "slurmd failed to start; see $STATE_DIR/log/slurmd.log"
  else
    log "slurmd already running"
  fi

  local st resumed=0
  while :; do
    st="$(node_state)"
    case "$st" in
      idle|mixed|allocated) break ;;
      down|drained|draining|drain|fail|failing)
        # e.g. left over from an unclean shutdown; ReturnToService=2 handles most cases
        if [[ $resumed -eq 0 ]] && pid_alive "$SLURMD_PID" slurmd; then
          log "node is '$st', resuming it"
          scontrol update NodeName="$(hostname -s 2>/dev/null || hostname)" State=RESUME >&2 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    if [[ $SECONDS -ge $end ]]; then
      tail -n 20 "$STATE_DIR/log/slurmd.log" >&2 2>/dev/null
      die "node not idle after ${START_TIMEOUT}s (state '${st:-?}'); see $STATE_DIR/log/"
    fi
    if [[ -z "$(daemon_pids slurmd "$SLURMD_PID")" ]]; then
      tail -n 20 "$STATE_DIR/log/slurmd.log" >&2 2>/dev/null
      die "slurmd exited; see $STATE_DIR/log/slurmd.log"
    fi
    sleep 0.5
  done
  log "started in $((SECONDS - t0))s"
  print_env
}

cmd_stop() {
  require_root
  export SLURM_CONF="$CONF"
  local ctld slurmd_pids jobs p

  ctld="$(daemon_pids slurmctld "$CTLD_PID" | tr '\n' ' ')"
  slurmd_pids="$(daemon_pids slurmd "$SLURMD_PID" | tr '\n' ' ')"

  if [[ -n "$ctld" ]] && ctld_up; then
    jobs="$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')"
    if [[ -n "${jobs// /}" ]]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      local end=$((SECONDS + 30))
      while [[ -n "$(squeue -h -o %A 2>/dev/null)" && $SECONDS -lt $end ]]; do sleep 0.5; done
    fi
  fi

  # shellcheck disable=SC2086
  stop_pids slurmd $slurmd_pids
  # shellcheck disable=SC2086
  stop_pids slurmctld $ctld

  # job step daemons that outlived slurmd (they inherit SLURM_CONF from slurmd)
  local steps=""
  for p in $(live_pgrep slurmstepd); do
    tr '\0' '\n' 2>/dev/null <"/proc/$p/environ" | grep -xF "SLURM_CONF=$CONF" >/dev/null && steps="$steps $p"
  done
  # shellcheck disable=SC2086
  stop_pids slurmstepd $steps

  if [[ -s "$MUNGE_MARK" ]]; then
    p="$(pidof_file "$MUNGE_MARK")"
    if [[ -n "$p" ]] && alive "$p" && [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == munged ]]; then
      stop_pids munged "$p"
    fi
    rm -f "$MUNGE_MARK"
  fi
  rm -f "$CTLD_PID" "$SLURMD_PID"
  if [[ -n "${ctld// /}${slurmd_pids// /}${steps// /}" ]]; then
    log "stopped (state kept in $STATE_DIR)"
  else
    log "no slurm daemons from $STATE_DIR were running"
  fi
  return 0
}

cmd_status() {
  if [[ -f "$CONF" ]] && command -v sinfo >/dev/null && ctld_up; then
    echo "SLURM_CONF=$CONF"
    SLURM_CONF="$CONF" sinfo
    return 0
  fi
  echo "local slurm cluster ($STATE_DIR) is not running"
  return 1
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
