#!/usr/bin/env bash
# Build a local Debian base image with python3, for machines whose Docker
# engine cannot pull images. The Debian mirror is the one this machine's own
# apt sources name, so nothing but Debian's package archive is contacted.
# It also holds dnsmasq-base (the binary alone, about 1 MB with its
# libraries): docker-compose.discovery.yml's name server runs it, and a
# build never reaches the network to install it.
#
#   docker/build-base-image.sh [TAG]      (default tag: rpcproxy-base:bookworm)
#
# Needs root (debootstrap) and a Docker engine; installs debootstrap with
# apt-get when it is missing.
set -euo pipefail

tag="${1:-rpcproxy-base:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
packages="python3,python3-venv,ca-certificates,dnsmasq-base"
# The image records the packages it was made with, so one made from an older
# list (say, before dnsmasq-base) is made again rather than taken as present.
label="org.rpcproxy.base-packages"

if docker image inspect "$tag" >/dev/null 2>&1; then
    made_with=$(docker image inspect \
        --format "{{with .Config.Labels}}{{index . \"$label\"}}{{end}}" "$tag")
    if [ "$made_with" = "$packages" ]; then
        echo "base image $tag already present"
        exit 0
    fi
    echo "base image $tag was made with [${made_with:-an unrecorded list}], not [$packages]: rebuilding"
fi

mirror_from_apt_sources() {
    # deb822 sources (URIs: ...) first, then one-line sources (deb URL suite ...).
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
            | grep -v -- '-security' | head -n 1 || true)
    fi
    printf '%s' "$uri"
}

mirror="${DEBIAN_MIRROR:-$(mirror_from_apt_sources)}"
if [ -z "$mirror" ]; then
    echo "no Debian mirror found in /etc/apt/sources*; set DEBIAN_MIRROR" >&2
    exit 1
fi

# An empty "$sudo" must not change how a command is parsed: "$sudo VAR=x cmd"
# with sudo="" runs a command named "VAR=x". `env` makes the assignment a
# plain argument whether or not sudo is in front of it.
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
debootstrap="${DEBOOTSTRAP:-/usr/sbin/debootstrap}"
if [ ! -x "$debootstrap" ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi

rootfs=$(mktemp -d /tmp/rpcproxy-rootfs.XXXXXX)
trap '$sudo rm -rf "$rootfs"' EXIT

echo "debootstrap $suite from $mirror into $rootfs"
$sudo "$debootstrap" --variant=minbase \
    --include="$packages" \
    "$suite" "$rootfs" "$mirror" >/dev/null

# Slim it like the official slim images: no apt lists, docs or man pages.
$sudo rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*

$sudo tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL $label=$packages" \
    - "$tag" >/dev/null
echo "built $tag"
