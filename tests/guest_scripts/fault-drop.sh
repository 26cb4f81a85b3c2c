# action=drop: the read is never completed; nvme_core.io_timeout=3 -> timeout, abort, retry.
host fault_add id=x1,opcode=read,slba=12288,nlb=8,action=drop,count=1
rd 12288 8
host info faults
host fault_del x1
rd 12288 8
kmsg
final_verify
