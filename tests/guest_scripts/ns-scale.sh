#!/bin/sh
# Namespace management at scale, the way storage test suites probe a controller's
# maximum: nvme-cli create-ns, attach-ns, detach-ns, delete-ns on /dev/nvme0.
#   MODE=cycle  (default) CYCLES times: create, attach, detach, delete one namespace
#   MODE=max    create + attach CYCLES namespaces (all present at once), then detach +
#               delete each (nvme-cli's tests/nvme_create_max_ns_test.py)
#   MODE=attach-cycle / attach-max  the same with namespaces 2..CYCLES+1 that exist
#               detached: attach and detach only (for QEMU's device, which has no create)
# After each attach the guest waits for /dev/nvme0n<nsid>, after each detach for it to
# go ("TIMEOUT ..." otherwise). Timing comes from the guest's own tracefs (one clock):
# trace_marker lines bound every step, nvme_setup_cmd/nvme_complete_rq give each admin
# command's latency as the driver sees it, nvme_async_event each notice. The summary
# ("STEP <name> n= wall_ms= busy_ms= cmds= ...") splits every step's wall time into time
# admin commands were outstanding (the device and the transport) and everything else
# (the guest: nvme-cli start-up, the driver's scan, block device add/remove).
# scripts/bench_ns_scale.py runs it and adds nvshell's own side.
CYCLES=${CYCLES:-16}
MODE=${MODE:-cycle}
NSZE=${NSZE:-2048}
C=/dev/nvme0
T=/sys/kernel/tracing
WAIT=${WAIT:-20}
rc=0
CNTLID=$(cat /sys/class/nvme/nvme0/cntlid)
echo "ctrl: $(cat /sys/class/nvme/nvme0/model) $(nvme id-ctrl $C | grep -E '^(oacs|nn) ' | tr -s ' ' | tr '\n' ' ')"

mount -t tracefs nodev $T 2>/dev/null
echo 0 > $T/tracing_on
echo "${TRACE_KB:-8192}" > $T/buffer_size_kb
# CMD_TRACE=0: notices and step markers only (max mode with hundreds of namespaces sends
# over half a million Identify commands: more than a trace buffer holds).
events="nvme_async_event"; [ "${CMD_TRACE:-1}" = 1 ] && events="nvme_setup_cmd nvme_complete_rq $events"
for e in $events; do echo 1 > $T/events/nvme/$e/enable; done
echo > $T/trace
echo 1 > $T/tracing_on
mark() { echo "NSSCALE $1" > $T/trace_marker; }

blk_of() {  # the block device of NSID $1 (named by instance, not by NSID)
    for blk in /sys/block/nvme0n*; do
        read blk_nsid <$blk/nsid 2>/dev/null && [ "$blk_nsid" = "$1" ] && [ -b /dev/${blk##*/} ] && return 0
    done
    return 1
}
await_blk() {  # await_blk NSID present|absent
    w=0
    while :; do
        if blk_of $1; then [ $2 = present ] && return 0; else [ $2 = absent ] && return 0; fi
        w=$((w + 1))
        [ $w -gt $((WAIT * 100)) ] && { echo "TIMEOUT nsid $1 $2"; return 1; }
        usleep 10000
    done
}
create() {
    out=$(nvme create-ns $C --nsze=$NSZE --ncap=$NSZE --flbas=0 --dps=0 --nmic=0 2>&1)
    nsid=$(echo "$out" | sed -n 's/^nsid: *//p')
    case $nsid in ''|*[!0-9]*) echo "create failed: $out"; return 1 ;; esac
}
attach() { nvme attach-ns $C --namespace-id=$1 --controllers=$CNTLID >/dev/null 2>&1 || { echo "attach $1 failed"; return 1; }
           await_blk $1 present; }
detach() { nvme detach-ns $C --namespace-id=$1 --controllers=$CNTLID >/dev/null 2>&1 || { echo "detach $1 failed"; return 1; }
           await_blk $1 absent; }
delete() { nvme delete-ns $C --namespace-id=$1 >/dev/null 2>&1 || { echo "delete $1 failed"; return 1; }; }

read t0 _ </proc/uptime
mark "begin"
if [ "$MODE" = attach-cycle ] || [ "$MODE" = attach-max ]; then
    # Namespaces 2..CYCLES+1 exist, detached (QEMU's own device has Namespace Attachment
    # but no Namespace Management): attach and detach only.
    i=1
    while [ $i -le $CYCLES ]; do
        i=$((i + 1))
        if [ "$MODE" = attach-cycle ]; then
            mark "attach"; attach $i || rc=1
            mark "detach"; detach $i || rc=1
        else
            mark "attach"; attach $i || rc=1
        fi
    done
    if [ "$MODE" = attach-max ]; then
        [ "$(ls /dev/nvme0n* | wc -l)" -ge "$CYCLES" ] && echo "SEEN all $CYCLES block devices" || { echo "MISSING devices"; rc=1; }
        i=1
        while [ $i -le $CYCLES ]; do i=$((i + 1)); mark "detach"; detach $i || rc=1; done
    fi
elif [ "$MODE" = max ]; then
    made=""
    i=0
    while [ $i -lt $CYCLES ]; do
        i=$((i + 1))
        mark "create"; create || { rc=1; break; }
        mark "attach"; attach $nsid || rc=1
        made="$made $nsid"
    done
    [ "$(ls /dev/nvme0n* | wc -l)" -ge "$CYCLES" ] && echo "SEEN all $CYCLES block devices" || { echo "MISSING devices"; rc=1; }
    for nsid in $made; do
        mark "detach"; detach $nsid || rc=1
        mark "delete"; delete $nsid || rc=1
    done
else
    i=0
    while [ $i -lt $CYCLES ]; do
        i=$((i + 1))
        mark "create"; create || { rc=1; break; }
        mark "attach"; attach $nsid || rc=1
        mark "detach"; detach $nsid || rc=1
        mark "delete"; delete $nsid || rc=1
    done
fi
mark "end"
read t1 _ </proc/uptime
echo 0 > $T/tracing_on

if [ "${LIST_CHECK:-0}" = 1 ]; then
    # With the notice switched off (Asynchronous Event Configuration) the driver never reads
    # the Changed Namespace List, so nvme-cli sees what the device collected: each changed
    # NSID once, ascending (nvme-cli reads it with RAE set: the list stays).
    echo "### notices-off"
    aec=$(nvme get-feature $C -f 0xb 2>&1 | sed -n 's/.*Current value: *//p')
    echo "aec: $aec"
    nvme set-feature $C -f 0xb -v 0 >/dev/null 2>&1 || { echo "set-feature aec failed"; rc=1; }
    create; n1=$nsid; create; n2=$nsid; create; n3=$nsid
    echo "made: $n1 $n2 $n3"
    attach $n3 || rc=1; attach $n1 || rc=1; attach $n2 || rc=1; detach $n1 || rc=1
    echo "changed:"; nvme changed-ns-list-log $C 2>&1
    nvme set-feature $C -f 0xb -v "$aec" >/dev/null 2>&1 || { echo "restoring aec failed"; rc=1; }
    detach $n2; detach $n3; delete $n1; delete $n2; delete $n3
    echo "### end-notices-off"
fi
echo "CYCLES $CYCLES mode=$MODE total_s=$(awk "BEGIN{print $t1 - $t0}")"
echo "active-after: $(nvme list-ns $C 2>&1 | tr '\n' ' ')"
echo "allocated-after: $(nvme list-ns $C --all 2>&1 | tr '\n' ' ')"
grep -q 'Overflow' $T/trace && echo "TRACE-OVERFLOW"

# One pass over the trace: per step, wall time, the time admin commands were outstanding
# (the union of their intervals: the driver's scan sends several at once) and, per opcode,
# the count and summed latency.
awk '
function ts(line) { match(line, /[0-9]+\.[0-9]+:/); return substr(line, RSTART, RLENGTH - 1) + 0 }
/tracing_mark_write: NSSCALE/ {
    t = ts($0); name = $NF
    if (cur != "") { wall[cur] += t - start; n[cur]++ }
    cur = (name == "begin" || name == "end") ? "" : name; start = t; next
}
/nvme_setup_cmd:/ && /qid=0,/ {
    match($0, /cmdid=[0-9]+/); id = substr($0, RSTART + 6, RLENGTH - 6)
    match($0, /cmd=\([a-z_]+/); op = substr($0, RSTART + 5, RLENGTH - 5); sub(/^nvme_admin_/, "", op)
    if (op == "async_event") next
    t = ts($0); t0[id] = t; o[id] = op; s[id] = cur
    if (outstanding++ == 0) { bstart = t; bstep = cur }
    next
}
/nvme_complete_rq:/ && /qid=0,/ {
    match($0, /cmdid=[0-9]+/); id = substr($0, RSTART + 6, RLENGTH - 6)
    if (!(id in t0)) next
    t = ts($0); k = s[id] SUBSEP o[id]
    cmds[s[id]]++; opt[k] += t - t0[id]; opn[k]++; delete t0[id]
    if (--outstanding == 0) busy[bstep] += t - bstart
    next
}
/nvme_async_event:/ { aen[cur]++; aens++ }
END {
    for (st in wall) {
        line = sprintf("STEP %s n=%d wall_ms=%.1f busy_ms=%.1f cmds=%d aens=%d per_step_ms=%.2f",
                       st, n[st], wall[st] * 1000, busy[st] * 1000, cmds[st], aen[st], wall[st] * 1000 / n[st])
        for (k in opn) { split(k, p, SUBSEP); if (p[1] == st) line = line sprintf(" %s=%d/%.1fms", p[2], opn[k], opt[k] * 1000) }
        print line
    }
    print "AENS " aens + 0
}' $T/trace
exit $rc
