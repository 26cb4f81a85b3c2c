# Protection information end to end, one boot. Namespaces: n1 512+8 type 1 (16b guard),
# n2 4096+16 type 1 (64b guard), n3 plain 512 (formatted to PI here). fault-lib.sh is prepended.
# Block device names follow probe order, not NSIDs: find each namespace by its nsid.
dev_of() { for d in /sys/block/nvme0n*; do [ "$(cat "$d/nsid")" = "$1" ] && echo "${d##*/}"; done; }
N1=$(dev_of 1); N2=$(dev_of 2); N3=$(dev_of 3)
echo "names: $N1 $N2 $N3"
for n in 1 2 3; do eval "b=\$N$n"; echo "integrity n$n: $(cat /sys/block/$b/integrity/format)"; done

# fio write + verify through the block layer (the kernel generates and checks the PI)
for n in 1 2; do
    eval "b=\$N$n"
    if fio --name=pi$n --filename=/dev/$b --direct=1 --ioengine=libaio --iodepth=16 --bs=4k --rw=randwrite \
            --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/f$n.out 2>&1; then
        echo "fio n$n ok"
    else
        tail -n 5 /tmp/f$n.out; echo "fio n$n FAILED"
    fi
done

# nvme-cli --prinfo: PRACT write (the device inserts the PI), checked read, wrong reference tags
head -c 512 /dev/urandom >/tmp/d
io() { op=$1; shift; nvme "$op" /dev/$N1 --block-count=0 --data-size=512 "$@" 2>&1; echo "rc=$?"; }
echo "pract-write: $(io write --start-block=100 --data=/tmp/d --prinfo=8 --ref-tag=100 --app-tag=0x42)"
echo "checked-read: $(io read --start-block=100 --data=/tmp/o --metadata-size=8 --metadata=/tmp/m --prinfo=7 \
    --ref-tag=100 --app-tag=0x42 --app-tag-mask=0xffff)"
cmp -s /tmp/d /tmp/o && echo "data-same"
echo "pi-read: $(od -An -tx1 /tmp/m | tr -d ' \n')"
echo "badref-write: $(io write --start-block=101 --data=/tmp/d --metadata-size=8 --metadata=/tmp/m --prinfo=1 \
    --ref-tag=101)"
echo "stored-555: $(io write --start-block=102 --data=/tmp/d --prinfo=8 --ref-tag=555)"
echo "badref-read: $(io read --start-block=102 --data=/tmp/o --metadata-size=8 --metadata=/tmp/m --prinfo=1 \
    --ref-tag=102)"
kmsg 4

# Format NVM from the guest: n3 to LBA format 1 (512 + 8) with PI type 1, then a rescan
nvme format /dev/$N3 --lbaf=1 --pi=1 --force 2>&1; echo "format rc=$?"
nvme ns-rescan /dev/nvme0; sleep 1
echo "after format n3: $(cat /sys/block/$N3/integrity/format) $(nvme id-ns /dev/$N3 | grep -E '^(flbas|dps)' | tr -s ' \n' ' ')"
host qom-get /objects/ns3 pi
host qom-get /objects/ns3 ms
DEV=/dev/$N3 wr 64 8
DEV=/dev/$N3 rd 64 8

# The PI fault action: the tuples a read returns are damaged, the data is not
DEV=/dev/$N1
dd if=/dev/urandom of=$DEV bs=4k count=1 seek=2000 oflag=direct 2>/dev/null
rd 16000 8
host fault_add id=p1,opcode=read,nsid=1,slba=16000,nlb=8,action=pi-corrupt,field=guard
rd 16000 8
rd 16008 8
host info faults
host fault_del p1
rd 16000 8
host fault_add id=p2,opcode=read,nsid=1,slba=16000,nlb=8,action=pi-corrupt,field=reftag
rd 16000 8
host fault_del p2
rd 16000 8
kmsg 8
final_verify
