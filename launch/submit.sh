#!/usr/bin/env bash
# Submit `s3ft run CONFIG` to a running Ray cluster as one Ray job; logs stream, the exit status is the job's.
#
# The plain line this wraps (token auth on, the repo as working dir):
#   RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \
#       --runtime-env-json '{"env_vars": {"RAY_AUTH_MODE": "token"}}' -- s3ft run CONFIG
#
# Usage: launch/submit.sh [--address URL] [--no-wait] [--sweep] CONFIG [--set key=value ...] [--grid ...]
#   --address   the cluster's dashboard/job address (default: $RAY_ADDRESS, else http://127.0.0.1:8265)
#   --no-wait   submit and return the job id instead of streaming its logs
#   --sweep     submit `s3ft sweep CONFIG ...` (a grid of runs, one job) instead of `s3ft run`
# The token: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else Ray's default (~/.ray/auth_token),
# the same token the cluster was started with (`ray get-auth-token --generate` makes one).
# NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME, NCCL_IB_HCA and S3FT_WATCHDOG_S, when set here, go to every
# process of the job (driver, engines, judges, training ranks) through the job's runtime env.
set -euo pipefail

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
wait_flag=()
command=run
while [[ $# -gt 0 ]]; do
  case "$1" in
    --address) address="$2"; shift 2 ;;
    --no-wait) wait_flag=(--no-wait); shift ;;
    --sweep) command=sweep; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "usage: $0 [--address URL] [--no-wait] [--sweep] CONFIG [--set key=value ...]" >&2; exit 2; }
config="$1"; shift
[[ -f "$config" ]] || { echo "$0: config file not found: $config" >&2; exit 2; }

export RAY_AUTH_MODE=token
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
# The job runs in a copy of the repo (the working dir); run outputs belong on shared storage, so
# output_dir should be an absolute path that every node sees.
runtime_env="$(python3 -c '
import json, os
passed = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_HCA", "S3FT_WATCHDOG_S")
env = {"RAY_AUTH_MODE": "token"} | {k: os.environ[k] for k in passed if k in os.environ}
print(json.dumps({"env_vars": env, "excludes": [".venv", ".cache", "runs", ".git"]}))')"
exec ray job submit --address "$address" --working-dir "$repo" --runtime-env-json "$runtime_env" \
  "${wait_flag[@]}" -- s3ft "$command" "$config" "$@"
