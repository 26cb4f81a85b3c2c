#!/bin/sh
# Guest side of the NVMe basic test: nvme-cli admin commands and a filesystem.
set -e
DEV=${DEV:-/dev/nvme0n1}
CTRL=${DEV%n[0-9]*}
echo "### nvme list"; nvme list
echo "### id-ctrl"; nvme id-ctrl "$CTRL"
echo "### id-ns"; nvme id-ns "$DEV"
echo "### smart-log"; nvme smart-log "$CTRL"
echo "### get-feature"; nvme get-feature "$CTRL" -f 7 -H; nvme get-feature "$CTRL" -f 6 -H
echo "### error-log"; nvme error-log "$CTRL" -e 4
echo "### lbaf"; cat /sys/block/${DEV#/dev/}/queue/logical_block_size
echo "### mkfs"
mke2fs -F "$DEV" >/tmp/mkfs.out 2>&1 || { cat /tmp/mkfs.out; echo mkfs-FAILED; exit 1; }
echo mkfs-ok
mkdir -p /mnt
if mount -t ext2 "$DEV" /mnt 2>/dev/null || mount "$DEV" /mnt 2>/dev/null; then
    dd if=/dev/urandom of=/mnt/blob bs=64k count=32 2>/dev/null
    a=$(md5sum </mnt/blob); umount /mnt; mount "$DEV" /mnt
    b=$(md5sum </mnt/blob); umount /mnt
    [ "$a" = "$b" ] && echo mount-roundtrip-ok || echo mount-roundtrip-MISMATCH
else
    echo "mount not available in this guest kernel"
fi
echo "### done"
