#!/bin/sh
# Guest side of the controller removal test: fio verify loops on the shared
# namespace (nsid 1, two paths); after "STEP remove-b" the host removes the
# controller with cntlid 2 (device_del); the guest waits until that controller
# is gone or dead, then checks that the namespace still works through the
# other controller.
WAIT=${WAIT:-40}
SIZE=${SIZE:-16M}
head_of() {
    for b in /sys/block/nvme*n*; do
        [ -e "$b" ] || continue
        n=${b##*/}
        case $n in nvme*c*n*) continue ;; esac
        [ "$(cat $b/nsid 2>/dev/null)" = "$1" ] && { echo "$n"; return 0; }
    done
    return 0
}
paths_of() { ls /sys/block/$1/multipath 2>/dev/null | wc -l; }
ctrl_of() {     # ctrl_of CNTLID -> nvmeN
    for c in /sys/class/nvme/nvme*; do [ "$(cat $c/cntlid 2>/dev/null)" = "$1" ] && echo "${c##*/}"; done
}
gone() { c=$(ctrl_of 2); [ -z "$c" ] || [ "$(cat /sys/class/nvme/$c/state 2>/dev/null)" = dead ] || [ "$(cat /sys/class/nvme/$c/state 2>/dev/null)" = deleting ]; }
H=$(head_of 1); B=$(ctrl_of 2)
echo "head $H paths=$(paths_of $H); cntlid 2 is $B"
echo round-robin >/sys/class/nvme-subsystem/$(ls /sys/class/nvme-subsystem | head -n1)/iopolicy 2>/dev/null || true
rm -f /tmp/stop /tmp/fio.log
(
    n=0
    while [ ! -f /tmp/stop ]; do
        n=$((n + 1))
        if fio --name=bg$n --filename=/dev/$H --direct=1 --bs=4k --ioengine=libaio --rw=randwrite \
                --iodepth=8 --size="$SIZE" --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/fio.$n 2>&1; then
            echo "pass $n" >>/tmp/fio.log
        else
            echo "FAIL $n" >>/tmp/fio.log; cat /tmp/fio.$n >>/tmp/fio.log
        fi
    done
) &
FIO=$!
sleep 2
rc=0
echo "STEP remove-b"
t0=$(cut -d' ' -f1 /proc/uptime)
i=0
while ! gone; do
    i=$((i + 1)); [ $i -gt $((WAIT * 5)) ] && { echo "TIMEOUT remove-b state=$(cat /sys/class/nvme/$B/state)"; rc=1; break; }
    sleep 0.2
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "SEEN remove-b after $t0..$t1 ctrls=$(ls /sys/class/nvme | tr '\n' ' ') head=$(head_of 1) paths=$(paths_of $(head_of 1))"
sleep 3
echo "after: ctrls=$(ls /sys/class/nvme | tr '\n' ' ') states=$(cat /sys/class/nvme/*/state | tr '\n' ' ') paths=$(ls /sys/block/$H/multipath 2>/dev/null | tr '\n' ' ')"
touch /tmp/stop
wait $FIO
echo "### fio during removal: $(grep -c '^pass' /tmp/fio.log) passes, $(grep -c '^FAIL' /tmp/fio.log) failures"
grep -q '^FAIL' /tmp/fio.log && { cat /tmp/fio.log; rc=1; }
fio --name=after --filename=/dev/$H --direct=1 --bs=4k --ioengine=libaio --rw=randwrite \
    --iodepth=8 --size="$SIZE" --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/after.out 2>&1 \
    && echo "SEEN fio-after ok" || { cat /tmp/after.out; echo "SEEN fio-after FAILED"; rc=1; }
nvme list
dmesg | grep -i nvme | tail -n 15
exit $rc
