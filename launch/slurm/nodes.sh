# shellcheck shell=bash
# Shell functions the sbatch scripts source (from the repo root, the job's working directory).

# node_ip NODE: the node's IPv4 address, from its Slurm NodeAddr (the address slurmctld reaches it at,
# its NodeName where NodeAddr is not set). Not `hostname --ip-address` on the node: that often answers
# 127.0.1.1 (Debian's /etc/hosts), which no other node can reach.
node_ip() {
  local addr ip
  addr="$(scontrol show node "$1" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"
  ip="$(getent ahostsv4 "${addr:-$1}" | awk 'NR == 1 {print $1}')"
  [[ -n "$ip" ]] || { echo "cannot resolve the address of node $1 (NodeAddr ${addr:-unset})" >&2; return 1; }
  echo "$ip"
}

# free_port: a TCP port free on this node now, so two jobs that share a node never meet on one port.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}
