#!/bin/sh
# Guest side of tests/test_guest_zns.py, second boot (nvshell restarted on the same file):
# the zone state and the data written in the first boot are there; then Namespace
# Management creates a zoned namespace (CSI 2) that the driver sees as host-managed.
head_of() {
    for b in /sys/block/nvme*n*; do
        n=${b##*/}
        case $n in nvme*c*n*) continue ;; esac
        [ "$(cat $b/nsid 2>/dev/null)" = "$1" ] && { echo "$n"; return 0; }
    done
}
Z=$(head_of 2); D=/dev/$Z
ZS=32768
echo "### blkzone restarted"
blkzone report "$D" | sed 's/^/BZ /'
host "info zones nsz"
echo "md5 zone1: $(dd if="$D" bs=1M count=1 skip=$((ZS * 512)) iflag=direct,skip_bytes 2>/dev/null | md5sum | cut -d' ' -f1)"
nvme read "$D" -s $((5 * ZS + 16)) -c 7 -z 4096 2>/dev/null | head -c 17; echo " <- append read back"
dd if=/dev/zero of="$D" bs=4k count=1 seek=$(((ZS + 2048) * 512)) oflag=direct,seek_bytes 2>/dev/null \
    && echo "write at restored wp ok"
echo "### create-ns csi 2"
nvme create-ns /dev/nvme0 --nsze=1048576 --ncap=1048576 --flbas=0 --csi=2 2>&1 | sed 's/^/CREATE /'
NEW=$(nvme list-ns /dev/nvme0 --all 2>/dev/null | sed -n 's/.*:0x\([0-9a-f]*\)$/\1/p' | tail -n1)
NEW=$((0x$NEW))
nvme attach-ns /dev/nvme0 -n $NEW -c $(cat /sys/class/nvme/nvme0/cntlid) 2>&1 | sed 's/^/ATTACH /'
i=0; while [ -z "$(head_of $NEW)" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
N=$(head_of $NEW)
echo "created nsid $NEW dev $N zoned: $(cat /sys/block/$N/queue/zoned 2>&1) nr_zones: $(cat /sys/block/$N/queue/nr_zones 2>&1)"
nvme zns id-ns /dev/$N 2>&1 | grep -E '^lbafe *0' | sed 's/^/NEWZID /'
echo "### zonefs"
modprobe zonefs 2>&1
mkzonefs -f /dev/$N >/tmp/mkz 2>&1 && echo "mkzonefs ok" || { cat /tmp/mkz; echo "mkzonefs FAILED"; }
mkdir -p /mnt/z && mount -t zonefs /dev/$N /mnt/z && echo "mount ok"
ls /mnt/z/seq | tr '\n' ' ' | sed 's/^/seq files: /'; echo
dd if=/dev/urandom of=/tmp/zf bs=1M count=2 2>/dev/null
dd if=/tmp/zf of=/mnt/z/seq/0 bs=1M count=2 oflag=direct 2>&1 | grep -v records
echo "zonefs file: $(stat -c %s /mnt/z/seq/0) bytes, md5 $(dd if=/mnt/z/seq/0 bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1) expect $(md5sum < /tmp/zf | cut -d' ' -f1)"
umount /mnt/z
echo "### end"
