#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the tests: installs Debian's
# packages if missing, writes the configuration, and starts munge, MariaDB, slurmdbd,
# slurmctld and slurmd by hand (no systemd). Idempotent; needs root. Prints the
# partition name when the node is idle.
#
# Facts this relies on (Debian 12, Slurm 22.05, no cgroups): SlurmctldHost must be
# `hostname -s`; the node line comes from `slurmd -C`; proctrack/linuxproc and
# task/none; DefMemPerCPU so jobs do not each take the whole node's memory;
# batch_sched_delay=0 for sub-second scheduling; accounting through slurmdbd so
# `sacct` works.
#
# Usage: tests/services/slurm.sh [start|stop]   (stop: ends the daemons it started, by
# their pid files, slurmd first; the configuration and accounting database stay)
set -euo pipefail
if [ "${1:-start}" = stop ]; then
  for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/slurm/slurmdbd.pid \
                 /run/mysqld/mysqld.pid /run/munge/munged.pid; do
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "slurm.sh: installing ${missing[*]}" >&2
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

host="$(hostname -s)"
mkdir -p /run/munge /run/slurm /run/mysqld /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld
chown slurm:slurm /run/slurm /var/spool/slurmctld /var/log/slurm

# munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged"

# MariaDB for slurmdbd (loopback only)
if ! pgrep -x mariadbd >/dev/null; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1
  (setsid mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/slurm/mariadb.log 2>&1 &)
fi
for _ in $(seq 1 100); do mariadb -e "select 1" >/dev/null 2>&1 && break; sleep 0.1; done
mariadb <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-test-only';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-test-only
StorageLoc=slurm_acct_db
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
CONF
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf

node_line="$(slurmd -C | head -1)"
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=nbjobs
SlurmctldHost=${host}
SlurmctldAddr=127.0.0.1
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
KillWait=5
MinJobAge=300
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MpiDefault=none
${node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
for _ in $(seq 1 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
sacctmgr -i add cluster nbjobs >/dev/null 2>&1 || true
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 200); do
  state="$(sinfo -h -n "$host" -o %t 2>/dev/null || true)"
  case "$state" in idle|mix|alloc) break ;; down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;; esac
  sleep 0.1
done
sinfo -h -o "%P %t" >&2
echo debug
