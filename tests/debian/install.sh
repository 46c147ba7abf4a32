#!/usr/bin/env bash
# Install a Debian package a test needs, when its binary is missing.
#
#   tests/debian/install.sh BINARY PACKAGE
#
# For the real peers the tests run that come from Debian's packages
# (tests/debian_packages.py names them: dnsmasq-base for the DNS discovery
# tests, prometheus for promtool). apt-get runs only when BINARY is missing;
# a machine that has it is left alone. Recommends are left out.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BINARY PACKAGE" >&2
    exit 2
fi
binary="$1"
package="$2"

if [ -x "$binary" ]; then
    exit 0
fi

# Several test processes may ask at once; one installs, the others wait and
# then find the binary. apt-get would also refuse a second concurrent
# install (its own lock), so installs are serialised.
exec 9>"${TMPDIR:-/tmp}/rpcproxy-apt-install.lock"
flock 9

if [ -x "$binary" ]; then
    exit 0
fi

# An empty "$sudo" must not change how a command is parsed: `env` makes the
# assignment a plain argument whether or not sudo is in front of it.
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing $package"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$package" >/dev/null

if [ ! -x "$binary" ]; then
    echo "$package installed, but $binary is missing" >&2
    exit 1
fi
echo "installed $binary"
