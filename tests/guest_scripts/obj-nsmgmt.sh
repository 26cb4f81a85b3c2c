#!/bin/sh
# Guest side of the Namespace Management / Attachment test: nvme-cli
# create-ns, attach-ns, detach-ns, delete-ns on a two-controller subsystem.
# After each change the guest polls sysfs (found by NSID, as in obj-runtime.sh)
# and prints "SEEN <name> ..." or "TIMEOUT <name>"; "STEP <name>" lines let the
# host look at its object tree at that point.
WAIT=${WAIT:-20}
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
await() {
    name=$1; shift; i=0
    while ! "$@"; do
        i=$((i + 1))
        if [ $i -gt $((WAIT * 5)) ]; then echo "TIMEOUT $name"; nvme list; return 1; fi
        sleep 0.2
    done
}
has_paths() { h=$(head_of "$1"); [ -n "$h" ] && [ -b "/dev/$h" ] && [ "$(paths_of "$h")" = "$2" ]; }
no_ns() { [ -z "$(head_of "$1")" ]; }
rc=0
C=/dev/nvme0
CNTLIDS=$(cat /sys/class/nvme/nvme*/cntlid | sort -n | tr '\n' ',' | sed 's/,$//')
OTHER=$(cat /sys/class/nvme/nvme1/cntlid)
echo "cntlids: $CNTLIDS (nvme0=$(cat /sys/class/nvme/nvme0/cntlid) nvme1=$OTHER)"
echo "oacs: $(nvme id-ctrl $C | grep -E '^oacs' | tr -s ' ')"
echo "tnvmcap: $(nvme id-ctrl $C | grep -E '^tnvmcap' | tr -s ' ')"
echo "unvmcap: $(nvme id-ctrl $C | grep -E '^unvmcap' | tr -s ' ')"

echo "### create-ns (32 MiB, 4 KiB LBAs, shared)"
nvme create-ns $C --nsze=8192 --ncap=8192 --flbas=4 --dps=0 --nmic=1 2>&1 || rc=1
echo "allocated: $(nvme list-ns $C --all 2>&1 | tr '\n' ' ')"
echo "active: $(nvme list-ns $C 2>&1 | tr '\n' ' ')"
no_ns 2 && echo "SEEN create-inactive" || { echo "nsid 2 active before attach"; rc=1; }
echo "STEP created"; sleep ${PAUSE:-2}

echo "### attach-ns to all controllers"
nvme attach-ns $C --namespace-id=2 --controllers=$CNTLIDS 2>&1 || rc=1
await attach has_paths 2 2 || rc=1
h=$(head_of 2)
echo "SEEN attach head=$h paths=$(paths_of $h) lbs=$(cat /sys/block/$h/queue/logical_block_size) sectors=$(cat /sys/block/$h/size)"
echo "nmic: $(nvme id-ns /dev/$h | grep -E '^nmic' | tr -s ' ')"
dd if=/dev/urandom of=/tmp/blk bs=4k count=64 2>/dev/null
dd if=/tmp/blk of=/dev/$h bs=4k oflag=direct 2>/dev/null
dd if=/dev/$h of=/tmp/blk2 bs=4k count=64 iflag=direct 2>/dev/null
cmp /tmp/blk /tmp/blk2 && echo "SEEN attach-io ok" || { echo "SEEN attach-io MISMATCH"; rc=1; }
echo "STEP attached"; sleep ${PAUSE:-2}

echo "### detach-ns from nvme1 (cntlid $OTHER)"
nvme detach-ns $C --namespace-id=2 --controllers=$OTHER 2>&1 || rc=1
await detach has_paths 2 1 || rc=1
h=$(head_of 2); echo "SEEN detach head=$h paths=$(paths_of $h) $(ls /sys/block/$h/multipath | tr '\n' ' ')"
echo "STEP detached"; sleep ${PAUSE:-2}

echo "### errors"
nvme attach-ns $C --namespace-id=2 --controllers=999 2>&1 | head -n1 | sed 's/^/attach-bad-ctrl: /'
nvme detach-ns $C --namespace-id=2 --controllers=$OTHER 2>&1 | head -n1 | sed 's/^/detach-not-attached: /'
nvme delete-ns $C --namespace-id=77 2>&1 | head -n1 | sed 's/^/delete-missing: /'
nvme create-ns $C --nsze=0 --ncap=0 --flbas=0 2>&1 | head -n1 | sed 's/^/create-zero: /'

echo "### delete-ns"
nvme delete-ns $C --namespace-id=2 2>&1 || rc=1
await delete no_ns 2 || rc=1
echo "SEEN delete heads=$(for b in /sys/block/nvme*n*; do n=${b##*/}; case $n in nvme*c*n*) ;; *) printf '%s ' $n ;; esac; done)"
echo "allocated: $(nvme list-ns $C --all 2>&1 | tr '\n' ' ')"
echo "STEP deleted"; sleep ${PAUSE:-2}
nvme list
exit $rc
