#!/usr/bin/env bash
# Build the reference Nomad peer (tests/nomad_peer/*.go) as one static binary.
#
#   tests/nomad_peer/build.sh [OUT]      (default OUT: build/nomad-peer)
#
# The peer is built on the libraries Nomad itself uses, from Debian's packages
# (no module download): Go, hashicorp/net-rpc-msgpackrpc, hashicorp/go-msgpack
# and hashicorp/yamux. Debian's copies have no go.mod, so the build runs in
# GOPATH mode against /usr/share/gocode. The packages are installed with
# apt-get only when the binary is out of date and one of them is missing; an
# up-to-date binary is left alone without looking at them (it is static and
# needs none of them to run).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/build/nomad-peer}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
out_dir="$(dirname "$out")"
mkdir -p "$out_dir"

packages=(
    golang-go
    golang-github-hashicorp-net-rpc-msgpackrpc-dev
    golang-github-hashicorp-go-msgpack-dev
    golang-github-hashicorp-yamux-dev
)

# Several test processes may ask for the binary at once; one builds, the
# others wait and then find it fresh. apt-get would also refuse a second
# concurrent install (its own lock), so the whole build is serialised.
exec 9>"$out.lock"
flock 9

up_to_date() {
    [ -x "$out" ] || return 1
    # Any source (or this script) newer than the binary means a rebuild.
    [ -z "$(find "$here" -maxdepth 1 \( -name '*.go' -o -name build.sh \) -newer "$out" -print -quit)" ]
}

if up_to_date; then
    echo "nomad-peer up to date: $out"
    exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    # An empty "$sudo" must not change how a command is parsed: "$sudo VAR=x
    # cmd" with sudo="" runs a command named "VAR=x". `env` makes the
    # assignment a plain argument whether or not sudo is in front of it.
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# GOPATH mode on Debian's source tree; CGO off makes the binary static (the
# pure-Go resolver and no libc), so it runs in any image. The build cache
# lives beside the output, writable whoever runs this and whatever HOME is.
# GOFLAGS is cleared so a caller's module flags (-mod=...) cannot break a
# GOPATH build.
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(
    cd "$here"
    env CGO_ENABLED=0 GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
        GOCACHE="$out_dir/.nomad-peer-gocache" \
        go build -trimpath -ldflags='-s -w' -o "$tmp" .
)
mv -f "$tmp" "$out"
echo "built $out"
