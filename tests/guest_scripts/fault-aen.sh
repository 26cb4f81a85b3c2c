# action=aen: temperature warning (SMART AEN) on the next read of LBA 40960.
T=/sys/kernel/tracing
mount -t tracefs nodev $T 2>/dev/null
echo 1 > $T/events/nvme/nvme_async_event/enable
nvme smart-log "$CTRL" | grep -E 'critical_warning|^temperature' | sed 's/^/before: /'
host fault_add id=a1,opcode=read,slba=40960,nlb=1,action=aen,aen=temperature,count=1
rd 40960 1
sleep 1
grep nvme_async_event $T/trace | sed 's/^ */trace: /'
nvme smart-log "$CTRL" | grep -E 'critical_warning|^temperature' | sed 's/^/after: /'
host fault_del a1
nvme smart-log "$CTRL" | grep -E 'critical_warning|^temperature' | sed 's/^/removed: /'
final_verify
