# action=fatal: CSTS.CFS on the write to LBAs 20480..20487; io_timeout=3 -> reset, retry.
host fault_add id=k1,opcode=write,slba=20480,nlb=8,action=fatal,count=1
wr 20480 8
host info faults
host fault_del k1
rd 20480 8
kmsg
nvme list | grep nvme0n1 >/dev/null && echo "namespace listed after reset"
final_verify
