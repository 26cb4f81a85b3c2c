# action=delay: reads of LBAs 8192..8199 complete 1500 ms late.
rd 8184 8
host fault_add id=d1,opcode=read,slba=8192,nlb=8,action=delay,delay=1500
rd 8192 8
rd 8184 8
host fault_del d1
rd 8192 8
final_verify
