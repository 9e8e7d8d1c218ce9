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
now() { date +%s%N; }
cache=$(mktemp -d)
# A freshly started libvirtd probes every emulator in the background: let it finish first,
# so capsd's cold runs do not compete with it.
virsh -c qemu:///system capabilities >/dev/null
for _ in $(seq "$cold"); do
  t0=$(now); "$capsd" domcapabilities --no-cache $args >/dev/null; echo "cold_capsd $(( $(now) - t0 ))"
done
for _ in $(seq "$cold"); do
  touch "$bin"
  t0=$(now); virsh -c qemu:///system domcapabilities $args >/dev/null; echo "cold_libvirt $(( $(now) - t0 ))"
done
"$capsd" --cache-dir "$cache" domcapabilities $args >/dev/null
virsh -c qemu:///system domcapabilities $args >/dev/null
for _ in $(seq "$warm"); do
  t0=$(now); "$capsd" --cache-dir "$cache" domcapabilities $args >/dev/null; echo "warm_capsd $(( $(now) - t0 ))"
done
for _ in $(seq "$warm"); do
  t0=$(now); virsh -c qemu:///system domcapabilities $args >/dev/null; echo "warm_virsh $(( $(now) - t0 ))"
done
rm -rf "$cache"
