#!/bin/sh
# Guest side of test_guest_datapath.py: shadow doorbells as Linux uses them.
# ns1 (memory) and ns2 (file) on one controller. Prints "dp NAME VALUE" lines.
set -e
CTRL=/dev/nvme0
echo "dp oacs $(nvme id-ctrl $CTRL | sed -n 's/^oacs *: *//p')"
fio_run() {
    name=$1; shift
    fio --name="$name" --direct=1 --bs=4k --ioengine=libaio --output-format=terse --terse-version=3 "$@" \
        >/tmp/$name.out 2>&1 || { cat /tmp/$name.out; echo "dp $name FAILED"; exit 1; }
    # terse v3: field 6 = KiB read, field 47 = KiB written (bs=4k: 4 KiB per I/O)
    echo "dp $name ios=$(( ($(cut -d';' -f6 /tmp/$name.out | tail -n1) + $(cut -d';' -f47 /tmp/$name.out | tail -n1)) / 4 ))"
}
# Markers for the host: Get Features 07h before the QD32 run, 08h after it.
nvme get-feature $CTRL -f 0x7 >/dev/null 2>&1 || true
fio_run qd32 --filename=/dev/nvme0n1 --rw=randread --iodepth=32 --size=64M --number_ios=6000
nvme get-feature $CTRL -f 0x8 >/dev/null 2>&1 || true
# Reset with shadow doorbells in use: Linux deletes its I/O queues (Delete SQ/CQ), disables,
# re-enables, sends Doorbell Buffer Config again and recreates the queues.
for i in 1 2; do
    nvme reset $CTRL
    sleep 1
    fio_run after-reset-$i --filename=/dev/nvme0n1 --rw=randrw --iodepth=16 --size=16M --number_ios=2000 \
        --verify=crc32c --do_verify=1 --verify_fatal=1
done
# File namespace at QD32 with verification (backend I/O off the IOThread).
fio_run file-verify --filename=/dev/nvme0n2 --rw=randwrite --iodepth=32 --size=48M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=0
echo "### datapath ok"
