// SPDX-License-Identifier: GPL-2.0
/* records.h: detail records of classified faults and lifecycle records: the
 * rings, the per-CPU batches, and closing an episode into a record.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

/* ---- maps ---------------------------------------------------------------------------------- */
/* Detail records of classified faults (no wakeups; drained by user space on a timer): the
 * fault path's in batches (fault_events), the rest one by one (fault_singles). */
#define FAULT_BATCH 16
struct fault_batch {
    u32 count;      /* records in use, from the start */
    u32 pad;
    struct cow_event ev[FAULT_BATCH];
};
BPF_RINGBUF_OUTPUT(fault_events, FAULT_RING_PAGES);
BPF_RINGBUF_OUTPUT(fault_singles, SINGLE_RING_PAGES);
/* The batch each CPU is filling (see "detail records" below). */
BPF_PERCPU_ARRAY(fault_batches, struct fault_batch, 1);
/* Fork, exec, exit and free records of members. */
BPF_RINGBUF_OUTPUT(proc_events, PROC_RING_PAGES);

/* ---- detail records ---------------------------------------------------------------------------
 * Every record written to a ring costs its writer a wait: each lands on a cache line of the ring
 * that is not in the cache, and the commit's atomic exchange waits for that line.  Measured on
 * the CoW storm (bench/interleaved.py), one ring record per copy cost the writer ~0.035x; one
 * per FAULT_BATCH records pays that wait once for all of them.
 *
 * So the fault path (on_fault, in the page_fault_user/kernel programs) appends its records to
 * its CPU's fault_batch, and writes the batch to fault_events when it is full.  A CPU's batch is
 * only ever touched with interrupts off on that CPU: the fault tracepoints run before the fault
 * handler enables interrupts, and the only other user, flush_fault_batch, runs there by IPI (or,
 * on the CPU user space runs on, with preemption off, where no fault of a member can come).  So
 * an append is never interleaved with another.  Every other place (allocation, exec, exit, free:
 * preemptible, rare) writes its record alone to fault_singles.  User space flushes every CPU
 * before each drain (kernel/tracer.py), so a record waits at most one drain cycle; records of
 * different CPUs come out of order, and user space does not rely on their order. */
static __always_inline void emit(u64 ts, u64 addr, u32 pid, u32 tid, u8 kind, u8 source, u8 via,
                                 s32 stack_id, s32 pystack_id, bool from_fault)
{
    if (!from_fault) {
        struct cow_event ev = {.ts = ts, .addr = addr, .pid = pid, .tid = tid,
                               .stack_id = stack_id, .pystack_id = pystack_id,
                               .kind = kind, .source = source, .via = via};
        if (fault_singles.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) != 0)
            stat_inc(STAT_LOST_EVENTS);
        return;
    }
    int zero = 0;
    struct fault_batch *batch = fault_batches.lookup(&zero);
    if (!batch) {
        stat_inc(STAT_LOST_EVENTS);
        return;
    }
    u32 n = batch->count;
    if (n >= FAULT_BATCH)
        n = 0;                          /* never: a full batch is written at once */
    struct cow_event *ev = &batch->ev[n];
    ev->ts = ts;
    ev->addr = addr;
    ev->pid = pid;
    ev->tid = tid;
    ev->stack_id = stack_id;
    ev->pystack_id = pystack_id;
    ev->kind = kind;
    ev->source = source;
    ev->via = via;
    batch->count = ++n;
    if (n == FAULT_BATCH) {
        if (fault_events.ringbuf_output(batch, sizeof(*batch), BPF_RB_NO_WAKEUP) != 0)
            stat_add(STAT_LOST_EVENTS, FAULT_BATCH);
        batch->count = 0;
    }
}

/* Run by user space on each CPU (BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU), never attached:
 * hands the CPU's partly filled batch to the ring before a drain. */
int flush_fault_batch(struct bpf_raw_tracepoint_args *ctx)
{
    int zero = 0;
    struct fault_batch *batch = fault_batches.lookup(&zero);
    if (!batch || batch->count == 0)
        return 0;
    u32 n = batch->count;
    if (n > FAULT_BATCH)
        n = FAULT_BATCH;
    if (fault_events.ringbuf_output(batch, sizeof(*batch), BPF_RB_NO_WAKEUP) != 0)
        stat_add(STAT_LOST_EVENTS, n);
    batch->count = 0;
    return 0;
}

/* Close the thread's open episode: a write-protect fault that got no copy was a reuse; a copy
 * or zero-fill gets its detail record now (a copy's source is known by now).  `from_fault`:
 * called by on_fault, the one place that may use the CPU's batch (see above). */
static __always_inline void close_episode(struct episode_state *ep, u32 tid, bool from_fault)
{
    if (ep->state == EP_WP_FAULT) {
        struct member *m = members.lookup(&ep->tgid);
        if (m)
            __sync_fetch_and_add(&m->reuses, 1);
        emit(ep->ts, ep->addr, ep->pid, tid, KIND_REUSE, SOURCE_ANON, ep->via, -1, -1,
             from_fault);
    } else if (ep->state == EP_COPIED) {
        emit(ep->ts, ep->addr, ep->pid, tid, ep->kind, ep->source, ep->via, ep->stack_id,
             ep->pystack_id, from_fault);
    }
    ep->state = EP_NONE;
}
