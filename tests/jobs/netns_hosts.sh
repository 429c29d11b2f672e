# shellcheck shell=bash disable=SC2034,SC2154  # sourced: sets arrays for the caller, reads its $tmp
# Two "hosts" on one machine, sourced by tests/jobs/multihost_test.sh and tests/bench/multihost_bandwidth.sh:
# network namespaces a and b joined by a veth pair ($subnet.1 and $subnet.2, interface $ifname in each,
# nothing in the root namespace), and mpirun across them, one rank per host, Open MPI over TCP only:
#   mpirun runs in host a; it starts host b's daemon through a plm_rsh_agent that does what ssh would
#   (`ip netns exec HOST env -i ... sh -c COMMAND`, with the host's own TMPDIR); `--mca btl tcp,self` and
#   `btl_tcp_if_include $ifname`, so every byte between the ranks crosses the veth link.
# Open MPI notices a dead link between its daemons only through TCP keepalive (default: 300 s idle, then
# 9 probes 20 s apart); without it an abort (the watchdog's, exit 5) waits on a message to the
# unreachable daemon for TCP's retransmission timeout, many minutes. mpirun here sets 1 s / 1 s / 3 probes.
#
# The caller defines say and fail (tests/jobs/common.sh) and $tmp (a directory it deletes), may set
# netns_prefix (default emh: namespaces emh<PID>a, emh<PID>b) before sourcing, and then:
#   netns_require        exit 77 (skipped) without ip or mpirun
#   netns_reap_stale     deletes namespaces with our prefix left by runs whose process is gone
#   make_hosts           makes the hosts (exit 77 where namespaces cannot be made); sets `multihost`
#   netns_hosts_cleanup  for the caller's EXIT trap: kills $mpirun_pid and whatever runs in the hosts,
#                        deletes every namespace made (also after a failed set-up)
# Arrays: multihost (mpirun across the hosts, set by make_hosts; mpirun itself runs in host a) and onehost
# (2 ranks on this host, shared memory); both pass OMP_NUM_THREADS=1 and --bind-to none.
netns_prefix=${netns_prefix:-emh}
subnet=10.77.0 ifname=emh0
ns_a=$netns_prefix$$a ns_b=$netns_prefix$$b  # unique per run: parallel runs do not clash
made_ns=()
mpirun_pid=
multihost=()

netns_require() {
  command -v mpirun > /dev/null || { say "SKIPPED: mpirun not found"; exit 77; }
  command -v ip > /dev/null || { say "SKIPPED: ip not found (Debian: iproute2; jobs/setup.sh installs it)"; exit 77; }
}

netns_hosts_cleanup() {
  local ns pid
  [ -z "$mpirun_pid" ] || kill -KILL "$mpirun_pid" 2> /dev/null
  # Whatever still runs inside our namespaces is ours (ranks, daemons, the agent's shells).
  for ns in "${made_ns[@]}"; do
    for pid in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$pid" 2> /dev/null; done
  done
  [ -z "$mpirun_pid" ] || wait "$mpirun_pid" 2> /dev/null
  ip link delete "${ns_a}0" 2> /dev/null  # a veth left in the root namespace by a failed set-up
  for ns in "${made_ns[@]}"; do ip netns delete "$ns" 2> /dev/null || say "warning: could not delete netns $ns"; done
  made_ns=()
}

# A run killed without its cleanup (SIGKILL, e.g. a CTest timeout) leaves its namespaces behind; those of
# runs whose process is gone are deleted here, with what still runs in them (that run's ranks and daemons).
netns_reap_stale() {
  local ns pid p
  for ns in $(ip netns list 2> /dev/null | grep -oE "^${netns_prefix}[0-9]+[ab]\b"); do
    pid=${ns#"$netns_prefix"}
    pid=${pid%?}
    [ "$pid" = $$ ] || ! kill -0 "$pid" 2> /dev/null || continue
    for p in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$p" 2> /dev/null; done
    ip netns delete "$ns" 2> /dev/null && say "deleted $ns, left by an earlier run"
  done
}

# make_hosts: namespaces a and b, a veth pair between them named $ifname on both sides, loopback up; the
# rsh agent in $tmp/netns_agent.sh; the `multihost` mpirun command.
make_hosts() {
  local err
  err=$(ip netns add "$ns_a" 2>&1) || { say "SKIPPED: cannot make a network namespace (ip netns add: $err)"; exit 77; }
  made_ns+=("$ns_a")
  ip netns add "$ns_b" || fail "ip netns add $ns_b failed"
  made_ns+=("$ns_b")
  ip netns exec "$ns_a" true || { say "SKIPPED: ip netns exec does not work here"; exit 77; }
  err=$(ip link add "${ns_a}0" type veth peer name "${ns_b}0" 2>&1) || { say "SKIPPED: cannot make a veth pair: $err"; exit 77; }
  local ns host=1
  for ns in "$ns_a" "$ns_b"; do
    { ip link set "${ns}0" netns "$ns" && ip -n "$ns" link set "${ns}0" name "$ifname" &&
      ip -n "$ns" addr add "$subnet.$host/24" dev "$ifname" && ip -n "$ns" link set lo up &&
      ip -n "$ns" link set "$ifname" up; } || fail "wiring $ns to the veth pair failed"
    host=$((host + 1))
  done
  mkdir -p "$tmp/host_a" "$tmp/host_b"
  # What ssh would do: run the command on the host, with a fresh environment and the host's own /tmp.
  cat > "$tmp/netns_agent.sh" << EOF
#!/bin/sh
# plm_rsh_agent for the hosts: netns_agent.sh [options] HOST COMMAND...
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) break ;; esac; done
host=\$1; shift
case "\$host" in
  $subnet.1) ns=$ns_a; t=$tmp/host_a ;;
  $subnet.2) ns=$ns_b; t=$tmp/host_b ;;
  *) echo "netns_agent.sh: unknown host \$host" >&2; exit 255 ;;
esac
exec ip netns exec "\$ns" env -i PATH="\$PATH" HOME="\${HOME:-/}" \${LD_LIBRARY_PATH:+LD_LIBRARY_PATH="\$LD_LIBRARY_PATH"} TMPDIR="\$t" /bin/sh -c "\$*"
EOF
  chmod +x "$tmp/netns_agent.sh"
  # Two hosts, one rank each, TCP only over $ifname; mpirun itself runs in host a.
  multihost=(ip netns exec "$ns_a" env TMPDIR="$tmp/host_a" mpirun "${netns_root_flag[@]}" -np 2
    --host "$subnet.1:1,$subnet.2:1" --mca plm_rsh_agent "$tmp/netns_agent.sh" --mca plm_rsh_no_tree_spawn 1
    --mca btl "tcp,self" --mca btl_tcp_if_include "$ifname" --mca oob_tcp_if_include "$ifname"
    --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3
    -x OMP_NUM_THREADS=1 --bind-to none)
}

netns_root_flag=()
[ "$(id -u)" -ne 0 ] || netns_root_flag=(--allow-run-as-root)
onehost=(mpirun "${netns_root_flag[@]}" -np 2 -x OMP_NUM_THREADS=1 --bind-to none)
[ "$(nproc)" -ge 2 ] || onehost+=(--oversubscribe)

# tx_bytes NS: bytes sent on $ifname in namespace NS
tx_bytes() { ip netns exec "$1" cat "/sys/class/net/$ifname/statistics/tx_bytes"; }
