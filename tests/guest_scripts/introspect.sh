#!/bin/sh
# Guest side of the introspection test: what nvme-cli reads from the controller (Identify
# as JSON, one "NAME {json}" line each), before and after the guest formats nvme0n1 to
# 4 KiB blocks and creates + attaches a namespace of its own.  The host compares every line
# with what qom-get says once the guest is done.
C=/dev/nvme0
N=/dev/nvme0n1
rc=0
dump() { printf '%s ' "$1"; shift; "$@" -o json 2>&1 | tr -d '\n'; echo; }
dump ID-CTRL nvme id-ctrl $C
dump ID-NS nvme id-ns $N
dump DESCS nvme ns-descs $N
# The 4 KiB format without metadata, found by its LBA format entry as a user would.
L=$(nvme id-ns $N | sed -n 's/^lbaf *\([0-9]*\) *: *ms:0 *lbads:12 .*/\1/p' | head -n1)
echo "FORMAT-INDEX $L"
nvme format $N --lbaf="$L" --force 2>&1 || rc=1
i=0; while [ "$(cat /sys/block/nvme0n1/queue/logical_block_size)" != 4096 ] && [ $i -lt 50 ]; do
    i=$((i + 1)); sleep 0.2; done
echo "LBS-AFTER $(cat /sys/block/nvme0n1/queue/logical_block_size)"
dump ID-NS-AFTER nvme id-ns $N
nvme create-ns $C --nsze=2048 --ncap=2048 --flbas="$L" --dps=0 --nmic=1 2>&1 || rc=1
nvme attach-ns $C --namespace-id=2 --controllers="$(cat /sys/class/nvme/nvme0/cntlid)" 2>&1 || rc=1
i=0; while [ ! -b /dev/nvme0n2 ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.2; done
dump ID-NS2 nvme id-ns /dev/nvme0n2
dump DESCS2 nvme ns-descs /dev/nvme0n2
echo "LBS2 $(cat /sys/block/nvme0n2/queue/logical_block_size 2>&1)"
exit $rc
