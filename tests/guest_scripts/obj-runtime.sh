#!/bin/sh
# Guest side of the run-time namespace test (host: tests/test_guest_objects.py).
# While a fio write+verify loop runs on nsid 1, the host changes the topology
# over QMP after each "STEP <name>" line; the guest polls sysfs until it sees
# the change (or gives up after WAIT seconds) and prints "SEEN <name> ..." or
# "TIMEOUT <name> ...". Namespaces are found by NSID (/sys/block/*/nsid): the
# multipath head's name depends on instance numbers, not on the NSID.
WAIT=${WAIT:-20}
SIZE=${SIZE:-32M}
head_of() {     # head_of NSID -> name of the multipath head (or plain ns) block device
    for b in /sys/block/nvme*n*; do
        [ -e "$b" ] || continue
        n=${b##*/}
        case $n in nvme*c*n*) continue ;; esac
        [ "$(cat $b/nsid 2>/dev/null)" = "$1" ] && { echo "$n"; return 0; }
    done
    return 0
}
paths_of() {    # paths_of HEAD -> number of controller paths under the head
    ls /sys/block/$1/multipath 2>/dev/null | wc -l
}
await() {       # await NAME COND...: poll COND every 0.2 s for WAIT s
    name=$1; shift; i=0
    while ! "$@"; do
        i=$((i + 1))
        if [ $i -gt $((WAIT * 5)) ]; then echo "TIMEOUT $name"; nvme list; return 1; fi
        sleep 0.2
    done
}
has_ns() { h=$(head_of "$1"); [ -n "$h" ] && [ -b "/dev/$h" ] && [ "$(paths_of "$h")" -ge "$2" ]; }
has_paths() { h=$(head_of "$1"); [ -n "$h" ] && [ "$(paths_of "$h")" = "$2" ]; }
no_ns() { [ -z "$(head_of "$1")" ]; }

NS1=$(head_of 1)
echo "ns1 head: $NS1 paths=$(paths_of $NS1)"
[ -b "/dev/$NS1" ] || { echo "no block device for nsid 1"; exit 1; }
echo round-robin >/sys/class/nvme-subsystem/$(ls /sys/class/nvme-subsystem | head -n1)/iopolicy 2>/dev/null || true
rm -f /tmp/stop /tmp/fio.log
(
    n=0
    while [ ! -f /tmp/stop ]; do
        n=$((n + 1))
        if fio --name=bg$n --filename=/dev/$NS1 --direct=1 --bs=4k --ioengine=libaio --rw=randwrite \
                --iodepth=8 --size="$SIZE" --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/fio.$n 2>&1; then
            echo "pass $n" >>/tmp/fio.log
        else
            echo "FAIL $n" >>/tmp/fio.log; cat /tmp/fio.$n >>/tmp/fio.log
        fi
    done
) &
FIO=$!
sleep 1
rc=0
for step in ${STEPS:-add detach-b attach-b del}; do
    echo "STEP $step"
    case $step in
        add) await add has_ns 2 ${PATHS:-2} || rc=1
             h=$(head_of 2)
             echo "SEEN add head=$h paths=$(paths_of $h) sectors=$(cat /sys/block/$h/size)"
             nvme list | grep -E "^/dev/$h " || true
             # the new namespace is usable: write and read back a block
             dd if=/dev/urandom of=/tmp/blk bs=4k count=16 2>/dev/null
             dd if=/tmp/blk of=/dev/$h bs=4k oflag=direct 2>/dev/null
             dd if=/dev/$h of=/tmp/blk2 bs=4k count=16 iflag=direct 2>/dev/null
             cmp /tmp/blk /tmp/blk2 && echo "SEEN add-io ok" || echo "SEEN add-io MISMATCH" ;;
        detach-b) await detach-b has_paths 2 1 || rc=1
             h=$(head_of 2); echo "SEEN detach-b head=$h paths=$(paths_of $h) $(ls /sys/block/$h/multipath | tr '\n' ' ')" ;;
        attach-b) await attach-b has_paths 2 2 || rc=1
             h=$(head_of 2); echo "SEEN attach-b head=$h paths=$(paths_of $h) $(ls /sys/block/$h/multipath | tr '\n' ' ')" ;;
        del) await del no_ns 2 || rc=1
             echo "SEEN del heads=$(for b in /sys/block/nvme*n*; do n=${b##*/}; case $n in nvme*c*n*) ;; *) printf '%s ' $n ;; esac; done)"
             nvme list ;;
    esac
done
sleep ${TAIL:-2}
touch /tmp/stop
wait $FIO
echo "### fio: $(grep -c '^pass' /tmp/fio.log) passes, $(grep -c '^FAIL' /tmp/fio.log) failures"
grep -q '^FAIL' /tmp/fio.log && { cat /tmp/fio.log; exit 1; }
exit $rc
