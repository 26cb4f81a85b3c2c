#!/bin/sh
# Guest side of the multipath test: two controllers of one subsystem, one
# shared namespace. Prints the subsystem's sysfs view and CMIC/NMIC, rebinds
# the controllers one after the other (which subsystem instance Linux picks
# depends on which controller finished Identify first; rebinding in order makes
# it nvme-subsys0 and exercises a controller disable/enable with the shared
# namespace), then runs fio write+verify on the multipath head.
SIZE=${SIZE:-64M}
show() {
    echo "### subsystems: $(ls /sys/class/nvme-subsystem | tr '\n' ' ')"
    for S in /sys/class/nvme-subsystem/nvme-subsys*; do
        echo "subsys ${S##*/} nqn=$(cat $S/subsysnqn)"
        for c in $S/nvme*; do
            n=${c##*/}
            case $n in
                nvme*n*) echo "  head $n" ;;
                *) echo "  ctrl $n cntlid=$(cat $c/cntlid) state=$(cat $c/state) nqn=$(cat $c/subsysnqn)" ;;
            esac
        done
    done
    echo "### block: $(ls /sys/block | grep nvme | tr '\n' ' ')"
}
wait_live() {   # wait_live N: until N controllers are live
    i=0
    while [ "$(cat /sys/class/nvme/nvme*/state 2>/dev/null | grep -c live)" -lt "$1" ] && [ $i -lt 100 ]; do
        sleep 0.1; i=$((i + 1))
    done
}
show
HEAD=$(ls /sys/class/nvme-subsystem/nvme-subsys*/ | grep -E '^nvme[0-9]+n[0-9]+$' | head -n1)
echo "cmic: $(nvme id-ctrl /dev/nvme0 | grep -E '^cmic' | tr -s ' ')"
echo "oacs: $(nvme id-ctrl /dev/nvme0 | grep -E '^oacs' | tr -s ' ')"
echo "nmic: $(nvme id-ns /dev/$HEAD | grep -E '^nmic' | tr -s ' ')"
nvme list-subsys 2>&1 || true

echo "### rebind in order"
devs=$(for c in /sys/class/nvme/nvme*; do basename "$(readlink -f $c/device)"; done | sort)
for d in $devs; do echo "$d" >/sys/bus/pci/drivers/nvme/unbind; done
echo "after unbind: $(ls /sys/class/nvme-subsystem 2>/dev/null | tr '\n' ' ')"
n=0
for d in $devs; do
    n=$((n + 1)); echo "$d" >/sys/bus/pci/drivers/nvme/bind; wait_live $n
done
i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
show
echo "nmic: $(nvme id-ns /dev/nvme0n1 | grep -E '^nmic' | tr -s ' ')"
[ -b /dev/nvme0n1 ] || { echo "no /dev/nvme0n1 block device"; exit 1; }
# round-robin so both controllers (both IOThreads) serve the shared namespace
echo round-robin >/sys/class/nvme-subsystem/nvme-subsys0/iopolicy 2>/dev/null || true
echo "iopolicy: $(cat /sys/class/nvme-subsystem/nvme-subsys0/iopolicy)"
echo "### fio"
fio --name=mpverify --filename=/dev/nvme0n1 --direct=1 --bs=4k --ioengine=libaio --rw=randwrite \
    --iodepth=16 --size="$SIZE" --verify=crc32c --do_verify=1 --verify_fatal=1 \
    >/tmp/fio.out 2>&1 && echo "fio-verify-ok" || { cat /tmp/fio.out; echo "fio-verify-FAILED"; exit 1; }
echo "### io per path"
for c in /sys/block/nvme0c*n1; do echo "${c##*/} $(cat $c/stat | tr -s ' ' | cut -d' ' -f2,6)"; done
