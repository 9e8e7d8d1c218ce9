#!/usr/bin/env bash
# Run inside one Debian stack chroot (by `cargo xtask bench stacks`): time capsd and that
# stack's libvirt on the same queries. Prints "KIND NANOSECONDS" lines.
#   cold_capsd   capsd domcapabilities --no-cache (probe KVM+TCG, derive, print)
#   cold_libvirt virsh domcapabilities right after touching the binary (libvirt re-probes it)
#   warm_capsd   capsd domcapabilities with its probe cache filled
#   warm_virsh   virsh domcapabilities with libvirt's capabilities in memory
set -euo pipefail
capsd=$1; cold=$2; warm=$3
bin=/usr/bin/qemu-system-x86_64
args="--emulatorbin $bin --virttype kvm"
[ -c /dev/kvm ] || args="--emulatorbin $bin --virttype qemu"
# Microseconds in T from bash's own clock, in this shell: `date +%s%N`, or any `$(...)`,
# would add a process start (about a millisecond, more than a warm capsd's whole answer) to
# every run timed. ($EPOCHREALTIME is seconds.microseconds; whatever the locale's
# separator, only the digits are kept.)
stamp() { T=${EPOCHREALTIME//[!0-9]/}; }
cache=$(mktemp -d)
# A freshly started libvirtd probes every emulator in the background: let it finish first,
# so capsd's cold runs do not compete with it.
virsh -c qemu:///system capabilities >/dev/null
for _ in $(seq "$cold"); do
  stamp; t0=$T; "$capsd" domcapabilities --no-cache $args >/dev/null; stamp; echo "cold_capsd $(( (T - t0) * 1000 ))"
done
for _ in $(seq "$cold"); do
  touch "$bin"
  stamp; t0=$T; virsh -c qemu:///system domcapabilities $args >/dev/null; stamp; echo "cold_libvirt $(( (T - t0) * 1000 ))"
done
"$capsd" --cache-dir "$cache" domcapabilities $args >/dev/null
virsh -c qemu:///system domcapabilities $args >/dev/null
for _ in $(seq "$warm"); do
  stamp; t0=$T; "$capsd" --cache-dir "$cache" domcapabilities $args >/dev/null; stamp; echo "warm_capsd $(( (T - t0) * 1000 ))"
done
for _ in $(seq "$warm"); do
  stamp; t0=$T; virsh -c qemu:///system domcapabilities $args >/dev/null; stamp; echo "warm_virsh $(( (T - t0) * 1000 ))"
done
rm -rf "$cache"
