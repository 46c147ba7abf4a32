#!/usr/bin/env bash
# Install dnsmasq, the real name server the DNS discovery tests ask.
#
#   tests/dns/install.sh
#
# Debian's dnsmasq-base is the binary alone (no service, no configuration
# that would start one), which is all the tests need: they run it in the
# foreground on a loopback port of their own. apt-get runs only when the
# binary is missing; a machine that has it is left alone.
#
# DNSMASQ names the binary to look for (default /usr/sbin/dnsmasq, where the
# package puts it); a test of this script points it elsewhere.
set -euo pipefail

binary="${DNSMASQ:-/usr/sbin/dnsmasq}"

if [ -x "$binary" ]; then
    exit 0
fi

# Several test processes may ask at once; one installs, the others wait and
# then find the binary. apt-get would also refuse a second concurrent
# install (its own lock), so the install is serialised.
exec 9>"${TMPDIR:-/tmp}/rpcproxy-dnsmasq-install.lock"
flock 9

if [ -x "$binary" ]; then
    exit 0
fi

# An empty "$sudo" must not change how a command is parsed: `env` makes the
# assignment a plain argument whether or not sudo is in front of it.
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing dnsmasq-base"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    dnsmasq-base >/dev/null

if [ ! -x "$binary" ]; then
    echo "dnsmasq-base installed, but $binary is missing" >&2
    exit 1
fi
echo "installed $binary"
