#!/bin/sh
# Regenerates the domain definitions in this directory with Debian's virt-install (virtinst 4.1,
# Debian 12) against the local libvirt 9.0 (qemu:///system). Run as root. The output names the
# host's default network and random UUIDs/MACs: the committed files are one such run.
set -eu
cd "$(dirname "$0")"
VI="virt-install --print-xml --connect qemu:///system --memory 1024 --import --osinfo detect=on,require=off"
truncate -s 1M /tmp/capsd-disk.img
$VI --name uefi-i440fx --machine pc --disk none --boot uefi --graphics vnc --video virtio > uefi-i440fx.xml
$VI --name secboot-q35 --machine q35 --disk /tmp/capsd-disk.img,bus=sata,format=raw \
    --boot firmware=efi,firmware.feature0.name=secure-boot,firmware.feature0.enabled=yes,firmware.feature1.name=enrolled-keys,firmware.feature1.enabled=yes,loader_secure=yes \
    --features smm.state=on --tpm emulator,model=tpm-crb,version=2.0 > secboot-q35.xml
$VI --name spice-q35 --machine q35 --disk /tmp/capsd-disk.img,bus=virtio,format=raw --graphics spice --video qxl \
    --channel spicevmc --redirdev usb,type=spicevmc --rng /dev/urandom --vcpus 4 > spice-q35.xml
$VI --name bios-i440fx --machine pc --disk /tmp/capsd-disk.img,bus=scsi,format=raw --disk device=cdrom,bus=sata \
    --cpu Haswell-noTSX --graphics vnc --video vga --memorybacking source.type=memfd,access.mode=shared \
    --filesystem /srv,srv,driver.type=virtiofs --features hyperv.relaxed.state=on,hyperv.vapic.state=on,hyperv.spinlocks.state=on,hyperv.spinlocks.retries=8191 \
    --tpm emulator,model=tpm-tis,version=1.2 --panic isa > bios-i440fx.xml
$VI --name virtio-video-q35 --machine q35 --disk none --cpu host-model --graphics vnc --video virtio \
    --vcpus 512 --iothreads 2 --hostdev pci_0000_00_01_0,driver.name=vfio > virtio-video-q35.xml
$VI --name aarch64-virt --arch aarch64 --machine virt --virt-type qemu --disk none --boot uefi \
    --cpu cortex-a57 --graphics none --features gic.version=3 > aarch64-virt.xml
