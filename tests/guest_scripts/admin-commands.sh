#!/bin/sh
# Guest side of the admin command set test (tests/test_guest_admin.py): nvme-cli drives every
# admin command and log page the controller offers; the host test checks the output.
CTRL=/dev/nvme0
DEV=/dev/nvme0n1
step() { echo "### $*"; }
step id-ctrl; nvme id-ctrl $CTRL
step supported-log-pages; nvme supported-log-pages $CTRL
step self-test
nvme device-self-test $CTRL -n 0xffffffff -s 1 && echo self-test-started
i=0; while [ $i -lt 30 ]; do
    nvme self-test-log $CTRL | grep -Eq "Current operation *: (0x)?0+$" && break
    sleep 0.5; i=$((i + 1))
done
nvme self-test-log $CTRL
step write-uncor
dd if=/dev/urandom of=/tmp/pat bs=4096 count=1 2>/dev/null
dd if=/tmp/pat of=$DEV bs=4096 seek=10 oflag=direct 2>/dev/null
nvme write-uncor $DEV -n 1 -s 80 -c 7 && echo write-uncor-ok
dd if=$DEV of=/dev/null bs=4096 skip=10 count=1 iflag=direct 2>/dev/null && echo READ-AFTER-UNCOR-OK || echo read-after-uncor-failed
step get-lba-status; nvme get-lba-status $CTRL -n 1 -s 0 -m 63 -a 0x11 -l 0
step lba-status-log; nvme lba-status-log $CTRL
dd if=/tmp/pat of=$DEV bs=4096 seek=10 oflag=direct 2>/dev/null
dd if=$DEV bs=4096 skip=10 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/pat && echo read-after-write-ok || echo READ-AFTER-WRITE-FAILED
step get-lba-status-after; nvme get-lba-status $CTRL -n 1 -s 0 -m 63 -a 0x11 -l 0
step fw
{ printf 'NVSHFW01'; printf '2.0     '; head -c 4080 /dev/zero; } > /tmp/fw.bin
nvme fw-download $CTRL -f /tmp/fw.bin && echo fw-download-ok
nvme fw-commit $CTRL -s 2 -a 1; echo "fw-commit rc=$?"
nvme fw-log $CTRL
nvme reset $CTRL; sleep 2
nvme id-ctrl $CTRL | grep -E "^fr "
step telemetry
nvme telemetry-log $CTRL --output-file=/tmp/tel.bin && echo telemetry-ok
ls -l /tmp/tel.bin
tail -c +513 /tmp/tel.bin | tr -d '\000' | head -c 300; echo
step persistent-event-log; nvme persistent-event-log $CTRL -a 1 -l 8192
step ocp; nvme ocp smart-add-log $CTRL
step sanitize
nvme sanitize $CTRL -a 2 && echo sanitize-started
i=0; while [ $i -lt 60 ]; do
    nvme sanitize-log $CTRL | grep -Eq "\(SSTAT\) *: *0x2$" || break
    sleep 0.5; i=$((i + 1))
done
nvme sanitize-log $CTRL
if dd if=$DEV of=/tmp/z bs=4096 skip=10 count=1 iflag=direct 2>/dev/null && [ -s /tmp/z ] \
        && [ "$(tr -d '\000' </tmp/z | wc -c)" = 0 ]; then
    echo sanitized-reads-zero
fi
# Global Data Erased (SSTAT bit 8) holds until the first write after the sanitize.
dd if=/dev/urandom of=$DEV bs=4096 seek=20 count=1 oflag=direct 2>/dev/null
nvme sanitize-log $CTRL | grep SSTAT | sed 's/^/after-write: /'
step durable
nvme set-feature $CTRL -f 6 -v 0
nvme get-feature $CTRL -f 6
yes NVSHELL-DURABLE-WRITE | head -c 1048576 > /tmp/durable
# The host kills nvshell (SIGKILL) when it reads this line: the write has completed.
if out=$(dd if=/tmp/durable of=$DEV bs=1M seek=8 count=1 oflag=direct 2>&1); then
    echo DURABLE-WRITTEN
else
    echo "durable write FAILED: $out"; dmesg | tail -n 8
fi
sleep 5
echo "### done"
