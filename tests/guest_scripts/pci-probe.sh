#!/bin/sh
# Guest side of the PCI probe test: the nvshell controller must appear as an
# NVMe-class function with a 16 KiB BAR0 and MSI-X, and the nvme driver must bind.
echo "### lspci"
lspci -nn
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] || continue
    echo "### device $d vendor=$(cat "$d/vendor") device=$(cat "$d/device") class=$(cat "$d/class")"
    # resource line 0: start end flags
    set -- $(sed -n 1p "$d/resource")
    echo "bar0_size=$(( $2 - $1 + 1 ))"
    lspci -vv -s "${d##*/}" | grep -E 'MSI-X|Region|Kernel driver' || true
    [ -e "$d/driver" ] && echo "driver=$(basename "$(readlink "$d/driver")")"
done
echo "### dmesg nvme"
dmesg | grep -i nvme || true
