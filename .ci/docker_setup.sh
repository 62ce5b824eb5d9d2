#!/usr/bin/env bash
# A Docker engine and a local Python base image for tests/service/test_deploy_compose.py, without any
# container registry: Debian's docker.io and docker-compose packages, dockerd started by hand,
# and a Debian bookworm base image made with debootstrap from the mirror apt already uses.
#
#   .ci/docker_setup.sh start        install (apt), start dockerd, build the base image (as root)
#   .ci/docker_setup.sh base-image   only the base image, on an engine that already runs
#   .ci/docker_setup.sh stop         stop the dockerd that `start` started; undo its network
#                                    changes (iptables rules, bridges, sysctls); delete its data
#
# The base image, tagged $IMAGE3_BASE_IMAGE (image3-ci/python:3.11-local), stands in for Docker
# Hub's python:3.11-slim: bookworm's Python 3.11 in a virtual environment at /opt/python (first
# on PATH, so `python` and `pip` work), trusting this machine's locally added CA certificates
# (/usr/local/share/ca-certificates), without which pip cannot reach the package index here.
# Build the project's image on it with `--build-arg BASE_IMAGE=$IMAGE3_BASE_IMAGE`.
#
# `start` uses an engine that already answers `docker info` as it is (and `stop` leaves it
# running); otherwise it starts one with its own data folder, deleted by `stop`, so nothing is
# cached from one CI run to the next. The Debian init script is not used: it fails here on the
# open-files limit it sets. Timings of each part are printed.
#
# Exit status of `start`: 0 ready; 1 error (the reason is printed); 3 not root or no apt-get.
set -euo pipefail

BASE_TAG=${IMAGE3_BASE_IMAGE:-image3-ci/python:3.11-local}
STATE=/run/image3-ci-docker            # pid, logs and the network snapshot of our dockerd
SUITE=bookworm                         # Debian 12: its python3 is 3.11, as python:3.11-slim

log() { echo "docker_setup: $*"; }
die() { echo "docker_setup: error: $*" >&2; exit 1; }
now() { date +%s%3N; }                 # milliseconds
took() { local ms=$(( $(now) - $1 )); printf '%d.%d s' $(( ms / 1000 )) $(( ms % 1000 / 100 )); }
ROOTFS=""                              # the debootstrap folder while it exists
cleanup_rootfs() {
    if [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ]; then
        umount -R "$ROOTFS/proc" "$ROOTFS/sys" 2>/dev/null || true
        rm -rf --one-file-system "$ROOTFS"
    fi
}
trap cleanup_rootfs EXIT

engine_up() { timeout 20 docker info >/dev/null 2>&1; }

# The Debian mirror apt uses (deb822 .sources or one-line .list files); $IMAGE3_DEBIAN_MIRROR
# overrides it.
debian_mirror() {
    if [ -n "${IMAGE3_DEBIAN_MIRROR:-}" ]; then echo "$IMAGE3_DEBIAN_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # the first stanza listing the release itself (not -security or -updates)
        uri=$(awk -v s="$SUITE" '
            /^[[:space:]]*$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
            END { if (u != "" && ok) print u }' "$f" | head -n1)
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk -v s="$SUITE" '$1 == "deb" && $0 !~ /\[/ && $3 == s { print $2; exit }' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    echo "http://deb.debian.org/debian"
}

install_packages() {
    local missing=() t0
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v iptables-save >/dev/null 2>&1 || missing+=(iptables)
    [ ${#missing[@]} -eq 0 ] && { log "docker.io, docker-compose, debootstrap already installed"; return; }
    log "installing ${missing[*]} (apt)"
    t0=$(now)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq "${missing[@]}"; } >"$STATE/apt.log" 2>&1; then
        tail -n 20 "$STATE/apt.log" >&2
        die "could not install ${missing[*]} with apt"
    fi
    log "installed in $(took "$t0")"
}

start_engine() {
    local t0
    t0=$(now)
    # what dockerd changes on the host, to undo it in `stop`
    iptables-save >"$STATE/iptables.before" 2>/dev/null || true
    ip -o link show | awk -F': ' '{ print $2 }' | sed 's/@.*//' >"$STATE/links.before"
    for k in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables; do
        v=$(sysctl -n "$k" 2>/dev/null) && echo "$k=$v"
    done >"$STATE/sysctl.before" || true
    DATA=$(mktemp -d /var/tmp/image3-ci-docker.XXXXXX)
    echo "$DATA" >"$STATE/data-root"
    # our own data folder (nothing cached across runs); its own containerd, started by dockerd
    dockerd --data-root "$DATA" --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$STATE/dockerd.started"
    for _ in $(seq 60); do
        engine_up && break
        kill -0 "$(cat "$STATE/dockerd.started")" 2>/dev/null || {
            tail -n 20 "$STATE/dockerd.log" >&2; die "dockerd exited (log: $STATE/dockerd.log)"; }
        sleep 1
    done
    engine_up || { tail -n 20 "$STATE/dockerd.log" >&2; die "dockerd did not answer in 60 s"; }
    log "dockerd $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}') up in $(took "$t0")"
}

build_base_image() {
    local mirror t0 size
    if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        log "base image $BASE_TAG already present"; return
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
    mirror=$(debian_mirror)
    ROOTFS=$(mktemp -d /var/tmp/image3-ci-rootfs.XXXXXX)
    local root=$ROOTFS
    t0=$(now)
    log "debootstrap --variant=minbase $SUITE from $mirror"
    if ! timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$root" "$mirror" >"$STATE/debootstrap.log" 2>&1; then
        tail -n 20 "$STATE/debootstrap.log" >&2
        die "debootstrap failed (log: $STATE/debootstrap.log)"
    fi
    log "debootstrap done in $(took "$t0")"
    t0=$(now)
    # this machine's locally added CAs (pip reaches the index through them here)
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" \
        2>/dev/null || true
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
    chroot "$root" python3 -m venv /opt/python || die "python3 -m venv failed"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_TAG" >/dev/null || die "docker import failed"
    docker run --rm "$BASE_TAG" sh -c 'python --version && pip --version' >/dev/null \
        || die "the base image has no working python and pip"
    size=$(docker image inspect -f '{{.Size}}' "$BASE_TAG")
    log "base image $BASE_TAG ($(( size / 1000000 )) MB) imported in $(took "$t0")"
    cleanup_rootfs
}

stop_engine() {
    local pid data t0 link tbl
    [ -f "$STATE/dockerd.started" ] || { log "no dockerd started by this script: nothing to stop"; return 0; }
    t0=$(now)
    pid=$(cat "$STATE/dockerd.started")
    if kill -0 "$pid" 2>/dev/null; then
        # containers first (a stopped daemon leaves their network state behind)
        docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1 || true
        docker network prune -f >/dev/null 2>&1 || true
        kill -TERM "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd $pid did not stop in 30 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
        fi
    fi
    log "dockerd stopped in $(took "$t0")"
    # bridges dockerd made (docker0, br-<network>)
    while read -r link; do
        case "$link" in docker0|br-*) ;; *) continue ;; esac
        grep -qx "$link" "$STATE/links.before" 2>/dev/null || ip link delete "$link" 2>/dev/null || true
    done < <(ip -o link show | awk -F': ' '{ print $2 }' | sed 's/@.*//')
    # iptables as before: tables in the snapshot restored, tables made since emptied
    if command -v iptables-save >/dev/null 2>&1; then
        [ -s "$STATE/iptables.before" ] && iptables-restore <"$STATE/iptables.before"
        for tbl in $(iptables-save | sed -n 's/^\*//p'); do
            grep -qx "\*$tbl" "$STATE/iptables.before" 2>/dev/null && continue
            iptables -t "$tbl" -F && iptables -t "$tbl" -X
            iptables -t "$tbl" -S | sed -n 's/^-P \([^ ]*\) .*/\1/p' \
                | xargs -r -I{} iptables -t "$tbl" -P {} ACCEPT
        done
    fi
    [ -f "$STATE/sysctl.before" ] && while read -r kv; do sysctl -qw "$kv" || true; done \
        <"$STATE/sysctl.before"
    data=$(cat "$STATE/data-root" 2>/dev/null || true)
    if [ -n "$data" ] && [ -d "$data" ]; then
        # overlay mounts a killed daemon may leave
        grep -o " ${data}[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf --one-file-system "$data"
    fi
    rm -rf "$STATE"
    log "network and data cleaned up; stop took $(took "$t0") in all"
}

case "${1:-}" in
    start)
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            log "not root or no apt-get: no Docker engine set up"
            exit 3
        fi
        mkdir -p "$STATE"
        install_packages
        if engine_up; then
            log "using the Docker engine that already runs (it is left running)"
        else
            start_engine
        fi
        build_base_image
        ;;
    base-image)
        [ "$(id -u)" = 0 ] || die "debootstrap and chroot need root"
        engine_up || die "no Docker engine answers \`docker info\`"
        mkdir -p "$STATE"
        build_base_image
        ;;
    stop)
        stop_engine
        ;;
    *)
        echo "usage: $0 start|base-image|stop" >&2
        exit 2
        ;;
esac
