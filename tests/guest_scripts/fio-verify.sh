#!/bin/sh
# Guest side of the fio tests: random reads at QD1 and QD32, then a random
# write with crc32c verification over SIZE (default 256M). Prints one
# "result NAME iops=N" line per job for the host to parse.
set -e
DEV=${DEV:-/dev/nvme0n1}
SIZE=${SIZE:-256M}
RUNTIME=${RUNTIME:-5}
run() {
    name=$1; shift
    fio --name="$name" --filename="$DEV" --direct=1 --bs=4k --output-format=terse --terse-version=3 "$@" >/tmp/$name.out 2>&1 \
        || { cat /tmp/$name.out; echo "result $name FAILED"; exit 1; }
    # terse v3: field 8 = read iops, field 49 = write iops
    r=$(cut -d';' -f8 /tmp/$name.out | tail -n1); w=$(cut -d';' -f49 /tmp/$name.out | tail -n1)
    echo "result $name read_iops=$r write_iops=$w"
}
[ "${SKIP_READS:-0}" = 1 ] || {
run randread-qd1 --ioengine=libaio --rw=randread --iodepth=1 --time_based --runtime="$RUNTIME" --size="$SIZE"
run randread-qd32 --ioengine=libaio --rw=randread --iodepth=32 --time_based --runtime="$RUNTIME" --size="$SIZE"
}
run write-verify --ioengine=libaio --rw=randwrite --iodepth=16 --size="$SIZE" \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=0
echo "### fio ok"
