# action=corrupt: one bit of read data in LBAs 24576..24583 (offset 12582912) flipped.
job() { fio --name=corrupt --filename="$DEV" --direct=1 --ioengine=psync --bs=4k --offset=12570624 --size=32k \
        --rw=write --verify=crc32c --do_verify=1 --verify_fatal=1 "$@" >/tmp/c.out 2>&1; }
host fault_add id=c1,opcode=read,slba=24576,nlb=8,action=corrupt,bits=1,seed=5
if job; then echo "fio corrupt job passed (unexpected)"; else echo "fio corrupt job failed rc=$?"; fi
grep -iE 'verify|crc|bad' /tmp/c.out | head -n 5 | sed 's/^/fio: /'
host fault_del c1
if job --verify_only; then echo "fio verify of the same data ok"; else cat /tmp/c.out; echo "fio re-verify FAILED"; fi
final_verify
