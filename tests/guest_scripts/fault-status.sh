# action=status: Unrecovered Read Error on exactly LBAs 4096..4103.
host fault_add id=f1,ctrl=ctrl0,opcode=read,nsid=1,slba=4096,nlb=8,action=status,status=unrecovered-read-error,dnr=on
rd 4096 8
rd 4100 1
rd 4103 2
rd 4088 8
rd 4104 8
host info faults
host fault_del f1
rd 4096 8
# without DNR and count=1 (the example): Linux retries, the retry succeeds
host fault_add id=f2,ctrl=ctrl0,opcode=read,nsid=1,slba=4096,nlb=8,action=status,status=unrecovered-read-error,count=1
rd 4096 8
host info faults
host fault_del f2
kmsg
final_verify
