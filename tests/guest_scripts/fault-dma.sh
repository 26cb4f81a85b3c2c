# action=dma-error: writes of LBAs 28672..28679 fail with Data Transfer Error (retried, then EIO).
host fault_add id=m1,opcode=write,slba=28672,nlb=8,action=dma-error
wr 28672 8
wr 28668 8
wr 28680 8
host info faults
host fault_del m1
wr 28672 8
kmsg
final_verify
