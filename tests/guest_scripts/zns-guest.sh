#!/bin/sh
# Guest side of tests/test_guest_zns.py, first boot: the zoned namespace (NSID 2) as the
# Linux zoned block layer, blkzone, nvme-cli's zns plugin and fio's zbd mode see it, and
# the zone-aware fault rules. "host LINE" (fault-lib.sh) runs an HMP command on nvshell.
# Zones: 16 of 16 MiB (32768 sectors), capacity 12 MiB (24576 sectors).
head_of() {
    for b in /sys/block/nvme*n*; do
        n=${b##*/}
        case $n in nvme*c*n*) continue ;; esac
        [ "$(cat $b/nsid 2>/dev/null)" = "$1" ] && { echo "$n"; return 0; }
    done
}
Z=$(head_of 2); D=/dev/$Z; Q=/sys/block/$Z/queue
ZS=32768
zone() { echo $(($1 * ZS)); }
report() { echo "### blkzone $1"; blkzone report "$D" | sed 's/^/BZ /'; host "info zones nsz"; }
echo "zoned-dev: $Z nvm-dev: $(head_of 1)"
for f in zoned chunk_sectors nr_zones max_open_zones max_active_zones zone_append_max_bytes; do
    echo "sysfs $f: $(cat $Q/$f 2>&1)"
done
echo "sysfs nvm-zoned: $(cat /sys/block/$(head_of 1)/queue/zoned)"
echo "size-sectors: $(cat /sys/block/$Z/size)"
nvme zns id-ns "$D" 2>&1 | grep -E '^(zoc|ozcs|mar|mor)|lbafe *0' | sed 's/^/ZID /'
nvme zns id-ctrl "$D" 2>&1 | grep -E '^zasl' | sed 's/^/ZID /'
report initial

echo "### zone moves"
dd if=/dev/urandom of=/tmp/z1 bs=1M count=1 2>/dev/null
dd if=/tmp/z1 of="$D" bs=1M count=1 seek=$(($(zone 1) * 512)) oflag=direct,seek_bytes 2>&1 | grep -v records
blkzone open -o $(zone 2) -c 1 "$D" && echo "open 2 ok"
blkzone close -o $(zone 1) -c 1 "$D" && echo "close 1 ok"
blkzone finish -o $(zone 3) -c 1 "$D" && echo "finish 3 ok"
dd if=/dev/zero of="$D" bs=4k count=2 seek=$(($(zone 4) * 512)) oflag=direct,seek_bytes 2>/dev/null && echo "write 4 ok"
report moved
blkzone reset -o $(zone 4) -c 1 "$D" && echo "reset 4 ok"
blkzone close -o $(zone 2) -c 1 "$D" && echo "close 2 ok"
if dd if=/dev/zero of="$D" bs=4k count=1 seek=$(($(zone 1) * 512)) oflag=direct,seek_bytes 2>/tmp/e; then
    echo "write below wp: unexpectedly ok"
else
    echo "write below wp: FAILED $(grep -v records /tmp/e | head -n1)"
fi
report after-reset
echo "md5 zone1: $(dd if="$D" bs=1M count=1 skip=$(($(zone 1) * 512)) iflag=direct,skip_bytes 2>/dev/null | md5sum | cut -d' ' -f1) expect $(md5sum < /tmp/z1 | cut -d' ' -f1)"

echo "### nvme zns"
nvme zns report-zones "$D" -d 6 2>&1 | sed 's/^/NZ /'
printf 'hello zoned world' > /tmp/a; dd if=/dev/zero bs=1 count=$((4096 - 17)) >> /tmp/a 2>/dev/null
nvme zns zone-append "$D" -s $(zone 5) -z 4096 -d /tmp/a 2>&1 | sed 's/^/APPEND /'
nvme zns zone-append "$D" -s $(zone 5) -z 4096 -d /tmp/a 2>&1 | sed 's/^/APPEND /'
nvme read "$D" -s $(($(zone 5) + 8)) -c 7 -z 4096 2>/dev/null | head -c 17; echo " <- read back"

echo "### fio zbd"
if fio --name=zbd --filename="$D" --direct=1 --zonemode=zbd --ioengine=psync --rw=randwrite --bs=16k \
        --offset=$((8 * 16))M --size=$((8 * 16))M --max_open_zones=2 --io_size=48M --verify=crc32c \
        --do_verify=1 --verify_fatal=1 >/tmp/fio.out 2>&1; then
    echo "fio zbd verify ok"
else
    cat /tmp/fio.out; echo "fio zbd verify FAILED"
fi
grep -E 'WRITE:|READ:' /tmp/fio.out | sed 's/^/FIO /'

echo "### faults"
host "fault_add id=zo,opcode=write,nsid=2,slba=$(zone 6),action=zone-offline,count=1"
if dd if=/dev/zero of="$D" bs=4k count=1 seek=$(($(zone 6) * 512)) oflag=direct,seek_bytes 2>/tmp/e; then
    echo "write zone 6: unexpectedly ok"; else echo "write zone 6: FAILED $(grep -v records /tmp/e | head -n1)"; fi
if dd if="$D" of=/dev/null bs=4k count=1 skip=$(($(zone 6) * 512)) iflag=direct,skip_bytes 2>/tmp/e; then
    echo "read zone 6: unexpectedly ok"; else echo "read zone 6: FAILED $(grep -v records /tmp/e | head -n1)"; fi
host "fault_add id=zr,opcode=write,nsid=2,slba=$(zone 7),action=zone-read-only,count=1"
if dd if=/dev/zero of="$D" bs=4k count=1 seek=$(($(zone 7) * 512)) oflag=direct,seek_bytes 2>/tmp/e; then
    echo "write zone 7: unexpectedly ok"; else echo "write zone 7: FAILED $(grep -v records /tmp/e | head -n1)"; fi
dd if="$D" of=/dev/null bs=4k count=1 skip=$(($(zone 7) * 512)) iflag=direct,skip_bytes 2>/dev/null && echo "read zone 7 ok"
blkzone report -o $(zone 6) -c 2 "$D" | sed 's/^/BZF /'
if blkzone reset -o $(zone 7) -c 1 "$D" 2>/tmp/e; then echo "reset zone 7: unexpectedly ok"
else echo "reset zone 7: FAILED $(head -n1 /tmp/e)"; fi
host "fault_add id=za,opcode=zone-append,nsid=2,action=status,status=zone-is-full,dnr=on,count=1"
nvme zns zone-append "$D" -s $(zone 5) -z 4096 -d /tmp/a 2>&1 | sed 's/^/FAPPEND /'
nvme zns zone-append "$D" -s $(zone 5) -z 4096 -d /tmp/a 2>&1 | sed 's/^/FAPPEND /'
host "info faults"
host "fault_del zo"; host "fault_del zr"; host "fault_del za"
blkzone report "$D" | sed 's/^/BZE /'
dmesg | grep -E "nvme|I/O error|zones exceeded" | grep -v "ommand line" | tail -n 12 | sed 's/^/dmesg: /'
sync
echo "### end"
