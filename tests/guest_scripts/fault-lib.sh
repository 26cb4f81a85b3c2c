#!/bin/sh
# Helpers for the fault injection guest scripts (prepended to each fault-*.sh by
# tests/test_guest_faults.py). "host LINE" asks the host test to run a shell
# (HMP) command on nvshell, e.g. fault_add/fault_del, and waits for it.
DEV=${DEV:-/dev/nvme0n1}
CTRL=${CTRL:-/dev/nvme0}
host() { echo "@@HOST $*"; sleep "${HOST_WAIT:-2}"; }
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
# rd SLBA NLB / wr SLBA NLB: one direct read/write (one NVMe command) of NLB 512-byte blocks at SLBA.
rd() {
    t0=$(now_ms)
    if out=$(dd if="$DEV" of=/dev/null bs=$(($2 * 512)) count=1 skip=$(($1 * 512)) iflag=direct,skip_bytes 2>&1); then
        echo "read $1+$2 ok ms=$(( $(now_ms) - t0 ))"
    else
        echo "read $1+$2 FAILED ms=$(( $(now_ms) - t0 )): $(echo "$out" | grep -v records | head -n1)"
    fi
}
wr() {
    t0=$(now_ms)
    if out=$(dd if=/dev/urandom of="$DEV" bs=$(($2 * 512)) count=1 seek=$(($1 * 512)) oflag=direct,seek_bytes 2>&1); then
        echo "write $1+$2 ok ms=$(( $(now_ms) - t0 ))"
    else
        echo "write $1+$2 FAILED ms=$(( $(now_ms) - t0 )): $(echo "$out" | grep -v records | head -n1)"
    fi
}
kmsg() { dmesg | grep -E 'nvme|I/O error|critical medium' | grep -v 'ommand line' | sed 's/^/dmesg: /' | tail -n "${1:-15}"; }
# After the fault: the namespace works, fio verify over the first 32 MiB (every fault range).
final_verify() {
    if fio --name=after --filename="$DEV" --direct=1 --ioengine=libaio --iodepth=8 --bs=16k --rw=randwrite \
            --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/after.out 2>&1; then
        echo "final fio verify ok"
    else
        cat /tmp/after.out; echo "final fio verify FAILED"
    fi
}
