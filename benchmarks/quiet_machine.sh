# Sourced by the compare_pytorch scripts: how busy the machine is, and waiting until it is quiet.
# Both libraries' two-thread figures collapse when another process holds one of the two cores.

# Percentage of all CPU time that other processes used over one second (this script is idle then).
others_busy() {
  local a b
  read -ra a </proc/stat
  sleep 1
  read -ra b </proc/stat
  local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
  local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
  echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}

# Waits up to QUIET_WAIT seconds for others_busy < 10; prints the last figure.
wait_for_quiet() {
  local deadline=$((SECONDS + ${QUIET_WAIT:-300})) busy
  busy=$(others_busy)
  while [ "$busy" -ge 10 ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 4
    busy=$(others_busy)
  done
  echo "$busy"
}
