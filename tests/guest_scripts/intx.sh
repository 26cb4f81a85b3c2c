#!/bin/sh
# Guest side of test_guest_intx.py: the nvme driver on a fallback interrupt (INTx with
# pci=nomsi, or MSI when MSI-X is hidden). Prints "irq NAME VALUE" lines for the host.
set -e
CTRL=/dev/nvme0
# Which interrupt the driver got: its /proc/interrupts lines (chip name: IO-APIC or PCI-MSI).
lines() { grep -E 'nvme[0-9]+q' /proc/interrupts | sed 's/^/irq line /'; }
count() { grep -E 'nvme[0-9]+q' /proc/interrupts | awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break } END { print s + 0 }'; }
lines
echo "irq msi_irqs $(ls /sys/bus/pci/devices/*/msi_irqs 2>/dev/null | wc -l)"
before=$(count)
nvme id-ctrl $CTRL >/tmp/id-ctrl.out 2>&1 || { cat /tmp/id-ctrl.out; echo "irq id-ctrl FAILED"; exit 1; }
echo "irq mn $(sed -n 's/^mn *: *//p' /tmp/id-ctrl.out)"
echo "irq oacs $(sed -n 's/^oacs *: *//p' /tmp/id-ctrl.out)"
fio --name=intx-verify --filename=/dev/nvme0n1 --direct=1 --bs=4k --ioengine=libaio --rw=randwrite \
    --iodepth=8 --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=0 \
    --output-format=terse --terse-version=3 >/tmp/fio.out 2>&1 || { cat /tmp/fio.out; echo "irq fio FAILED"; exit 1; }
echo "irq fio_write_kib $(cut -d';' -f47 /tmp/fio.out | tail -n1)"
echo "irq fio_read_kib $(cut -d';' -f6 /tmp/fio.out | tail -n1)"
after=$(count)
echo "irq interrupts $((after - before))"
lines
dmesg | grep -iE 'nobody cared|irq [0-9]+: |nvme.*timeout' | sed 's/^/irq dmesg /' || true
echo "### intx ok"
