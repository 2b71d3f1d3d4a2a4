# Shared by up, smoke, down and ctl (sourced, not run): the project's
# settings and the docker-compose and kairosctl calls.
# shellcheck shell=bash

compose_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$compose_dir" || exit 1

# Defaults from .env (docker-compose reads it too); the environment wins.
while IFS='=' read -r key value; do
  case "$key" in
    '' | '#'*) continue ;;
  esac
  if [ -z "${!key+x}" ]; then
    export "$key=$value"
  fi
done <"$compose_dir/.env"

if ! [[ "$COMPOSE_PROJECT_NAME" =~ ^[a-z0-9][a-z0-9_-]*$ ]]; then
  echo "COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME: use lowercase letters, digits, - and _" >&2
  exit 2
fi
if ! [[ "$KAIROS_NODES" =~ ^[1-9][0-9]*$ ]]; then
  echo "KAIROS_NODES=$KAIROS_NODES: a number of nodes, at least 1" >&2
  exit 2
fi

# The folder `init` writes, in the `fleet` volume, as every container sees it.
fleet_dir=/var/lib/kairos-fleet

# Compose v2 (`docker compose`) when the CLI has it, else v1 (`docker-compose`).
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  compose_cmd=(docker-compose)
fi

compose() {
  "${compose_cmd[@]}" --project-directory "$compose_dir" -f "$compose_dir/docker-compose.yml" "$@"
}

# kairosctl inside replica-1 (or KAIROS_CTL_REPLICA), on the project
# network: the replicas' certificates name replica-1..3, names only this
# network resolves.
ctl() {
  compose exec -T "${KAIROS_CTL_REPLICA:-replica-1}" kairosctl --config "$fleet_dir/kairosctl.toml" "$@"
}

# Waits up to $1 seconds for `check` (the remaining arguments) to succeed.
wait_until() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 2
  done
}

# Whether the cluster has a leader and three voters, as replica-1 sees it.
cluster_formed() {
  local status
  status="$(ctl cluster status -o json 2>/dev/null)" || return 1
  jq -e '.leader_id != 0 and ([.replicas[] | select(.role == "leader" or .role == "follower")] | length) == 3' \
    <<<"$status" >/dev/null
}

need_jq() {
  command -v jq >/dev/null 2>&1 || {
    echo "jq is missing (apt-get install jq)" >&2
    exit 1
  }
}
