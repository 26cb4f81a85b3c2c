# action=irq-loss: the read completes but no interrupt; io_timeout=3 -> the driver polls the CQ.
host fault_add id=i1,opcode=read,slba=16384,nlb=8,action=irq-loss,count=1
rd 16384 8
host info faults
host fault_del i1
rd 16384 8
kmsg
final_verify
