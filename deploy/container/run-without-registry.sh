#!/usr/bin/env bash
# Run the image's runtime stage where no container registry is reachable (as on
# the project's build machines): a Debian bookworm root filesystem made locally
# with debootstrap stands in for debian:bookworm-slim, and the bftnode binary
# built on this host (Debian 12, the same glibc) stands in for the build stage's.
# The runtime stage of deploy/container/Dockerfile is used verbatim but for the
# source of that one COPY. Then podman-compose brings up the four replicas of
# deploy/compose/compose.yaml (not Prometheus and Grafana, whose images come from
# a registry) with the testnet `testnet init --hostnames 'replica{i}'` writes, and
# a client container commits a write and reads it back through them.
#
# Usage (as root, from the repository root, after `cargo build --release -p bftnode`):
#   deploy/container/run-without-registry.sh [BFTNODE_BINARY]
# Needs podman, podman-compose, runc, aardvark-dns and debootstrap (all Debian's).
set -euo pipefail
cd "$(dirname "$0")/../.."

binary="${1:-${CARGO_TARGET_DIR:-target}/release/bftnode}"
work="$(mktemp -d)"
project=bftnode-local
# This machine's kind: runc, and explicit limits.
run=(podman run --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1000:1000)

# Everything of the project, by podman-compose's labels and names: containers,
# volumes, network (podman-compose 1.0.3's `down` leaves the network, and an
# interrupted run leaves everything, which its `up` would silently restart).
remove_project() {
    podman ps -aq --filter "label=io.podman.compose.project=$project" | xargs -r podman rm -f >/dev/null
    podman volume ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman volume rm -f >/dev/null
    podman network rm -f "${project}_default" >/dev/null 2>&1 || true
}
cleanup() {
    remove_project
    rm -rf "$work"
}
trap cleanup EXIT
remove_project

if ! podman image exists localhost/debian:bookworm-slim; then
    echo "== debootstrap bookworm (stands in for debian:bookworm-slim)"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$work/rootfs" -c . | podman import - localhost/debian:bookworm-slim >/dev/null
    rm -rf "$work/rootfs"
fi

echo "== the Dockerfile's runtime stage, with this host's binary"
mkdir -p "$work/context/out"
install -m 0755 "$binary" "$work/context/out/bftnode"
strip "$work/context/out/bftnode"
awk '/^FROM /{stage++} stage==2' deploy/container/Dockerfile |
    sed -e 's|^FROM debian:bookworm-slim|FROM localhost/debian:bookworm-slim|' \
        -e 's|^COPY --from=build /out/bftnode|COPY out/bftnode|' >"$work/context/Containerfile"
grep -q '^COPY out/bftnode' "$work/context/Containerfile"
podman build --runtime runc -q -t localhost/bftnode:latest "$work/context" >/dev/null
podman image ls localhost/bftnode:latest --format '   image {{.Repository}}:{{.Tag}} {{.Size}}'

echo "== the compose testnet's replicas (deploy/compose/compose.yaml), with podman-compose"
# The compose file beside the testnet it mounts, in a scratch copy of deploy/compose.
mkdir -p "$work/compose"
cp deploy/compose/compose.yaml "$work/compose/"
"$binary" testnet init --replicas 4 --hostnames 'replica{i}' --dir "$work/compose/testnet" >/dev/null
chown -R 10001:10001 "$work/compose/testnet"
compose=(podman-compose -p "$project" -f "$work/compose/compose.yaml"
    --podman-run-args "--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 --read-only")
# Prometheus and Grafana come from registries this machine cannot reach.
# (podman-compose 1.0.3 exits 0 when a container fails to start: the readiness
# wait below is what checks.)
"${compose[@]}" up -d replica0 replica1 replica2 replica3 >"$work/up.log" 2>&1 || {
    cat "$work/up.log"
    exit 1
}
network="${project}_default"
podman network exists "$network" || { cat "$work/up.log"; echo "compose made no network $network"; exit 1; }

client() {
    "${run[@]}" --rm --network "$network" -v "$work/compose/testnet:/etc/bftnode:ro" \
        localhost/bftnode:latest "$@"
}
echo "== waiting for every replica to reach the other three"
first="${project}_replica0_1"
ready=0
for _ in $(seq 60); do
    ready=0
    for i in 0 1 2 3; do
        status="$(podman exec "$first" bftnode status --node "http://replica$i:7100" --json 2>/dev/null || true)"
        case "$status" in
            *'"peers_connected": 3'*) ready=$((ready + 1)) ;;
        esac
    done
    [ "$ready" = 4 ] && break
    sleep 1
done
if [ "$ready" != 4 ]; then
    cat "$work/up.log"
    podman logs "$first" 2>&1 | tail -20 || true
    echo "not every replica connected"
    exit 1
fi
echo "   replica0 runs as: $(podman exec "$first" id)"

echo "== a client container writes and reads through the replicas"
test "$(client client --config /etc/bftnode/client.toml put greeting hello)" = ok
test "$(client client --config /etc/bftnode/client.toml get greeting)" = hello
for i in 0 1 2 3; do
    podman exec "$first" bftnode status --node "http://replica$i:7100"
done | sort -u
echo "== the runtime stage ran: 4 replicas, non-root, read-only root, found each other by name, committed"
