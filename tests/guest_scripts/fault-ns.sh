# action=ns-not-ready for 2 s, then action=ns-remove for 4 s.
host fault_add id=n1,opcode=read,slba=32768,nlb=8,action=ns-not-ready,duration=2000,count=1
rd 32768 8
rd 40000 8
sleep 2
rd 32768 8
host fault_del n1
host fault_add id=n2,opcode=read,slba=36864,nlb=8,action=ns-remove,duration=4000,count=1
rd 36864 8
i=0; while [ -e /sys/block/nvme0n1 ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
[ -e /sys/block/nvme0n1 ] && echo "namespace still present" || echo "namespace gone"
nvme list-ns "$CTRL" | sed 's/^/list-ns: /'
i=0; while [ ! -e /sys/block/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -e /sys/block/nvme0n1 ] && echo "namespace back" || echo "namespace still gone"
host fault_del n2
rd 36864 8
kmsg 20
final_verify
