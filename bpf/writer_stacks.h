// SPDX-License-Identifier: GPL-2.0
/* writer_stacks.h: the native user stack of the writer: bpf_get_stackid for
 * allocations, a frame-pointer walk of the fault's registers for copies.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

/* ---- maps ---------------------------------------------------------------------------------- */
/* Native user stacks of copies and allocations, by id (bpf_get_stackid).  Ids are stable: no
 * BPF_F_REUSE_STACKID, so a hash collision fails (-EEXIST, counted) rather than silently
 * re-pointing an id user space already holds.  BPF_F_FAST_STACK_CMP: a stack whose 32-bit hash
 * matches the bucket's is taken as the same stack without comparing frames (saves ~0.4 us per
 * copy here; two different stacks would need the same full hash to be confused).  32 frames
 * of 8 bytes per entry. */
struct stack_frames {
    u64 ip[STACK_DEPTH];
};
BPF_TABLE("stacktrace", int, struct stack_frames, user_stacks, STACK_ENTRIES);

/* ---- writer stacks (attribution) -------------------------------------------------------------- */
/* The native user stack of the thread that made the copy, or -1.  Called from mm_page_alloc in
 * the faulting thread's context, so the user registers are the writer's. */
static __always_inline s32 capture_user_stack(void *ctx)
{
#ifdef NO_STACKS
    return -1;
#else
    int id = user_stacks.get_stackid(ctx, BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP);
    if (id < 0) {
        stat_inc(STAT_STACK_ERRORS);   /* -EEXIST (bucket taken), -EFAULT (no frame), ... */
        return -1;
    }
    return id;
#endif
}

/* The writer's stack at a user-mode fault, walked here rather than with bpf_get_stackid, which
 * costs over a microsecond per call on this VM (a third of a copy): the faulting registers are
 * the tracepoint's `regs` argument (the entry code's exception frame, whose layout is the
 * x86-64 ABI's: ip, sp and bp at fixed offsets), and each frame is one 16-byte user read of
 * [saved bp, return address].  A frame pointer must lie in the stack above sp and grow
 * outwards; the walk ends at the first one that does not, so code built without frame pointers
 * (rbp used as a general register, often pointing at the object being written) yields its
 * leaf and no garbage.  Stacks are stored once in fault_stacks, in the bucket their frames
 * hash to, as bpf_get_stackid does: ids run from STACK_ENTRIES to 2 * STACK_ENTRIES - 1, above
 * user_stacks' ids, and stay small (user space indexes arrays with them).  A bucket taken by
 * another stack gives no stack (counted in stack_errors), never a wrong one. */
#define PT_REGS_BP_OFFSET 32
#define PT_REGS_IP_OFFSET 128
#define PT_REGS_SP_OFFSET 152
#define PT_REGS_SPAN_WORDS ((PT_REGS_SP_OFFSET - PT_REGS_BP_OFFSET) / 8 + 1)
#define USER_STACK_SPAN (64ULL << 20)   /* frame pointers beyond sp + 64 MiB are not frames */
BPF_HASH(fault_stacks, u32, struct stack_frames, STACK_ENTRIES);
BPF_PERCPU_ARRAY(stack_scratch, struct stack_frames, 1);

static __always_inline s32 walk_fault_stack(void *regs)
{
#ifdef NO_STACKS
    return -1;
#else
    /* bp, ip and sp in one read of the exception frame's [bp, sp] span: one helper call
     * instead of three. */
    u64 saved[PT_REGS_SPAN_WORDS];
    if (bpf_probe_read_kernel(saved, sizeof(saved), regs + PT_REGS_BP_OFFSET))
        return -1;
    u64 ip = saved[(PT_REGS_IP_OFFSET - PT_REGS_BP_OFFSET) / 8];
    u64 sp = saved[(PT_REGS_SP_OFFSET - PT_REGS_BP_OFFSET) / 8];
    u64 fp = saved[0];
    if (!ip)
        return -1;
    int zero = 0;
    struct stack_frames *frames = stack_scratch.lookup(&zero);
    if (!frames)
        return -1;
    /* Frames end at the first 0 (user space reads no further), so the scratch's stale tail
     * past it needs no clearing. */
    frames->ip[0] = ip;
    u64 hash = (0xcbf29ce484222325ULL ^ ip) * 0x100000001b3ULL;
#pragma clang loop unroll(disable)
    for (int i = 1; i < STACK_DEPTH; i++) {
        frames->ip[i] = 0;
        if (fp < sp || fp - sp > USER_STACK_SPAN || (fp & 7))
            break;
        u64 frame[2];               /* saved frame pointer, return address */
        if (bpf_probe_read_user(frame, sizeof(frame), (void *)fp) || !frame[1])
            break;
        frames->ip[i] = frame[1];
        hash = (hash ^ frame[1]) * 0x100000001b3ULL;
        if (frame[0] <= fp) {
            if (i + 1 < STACK_DEPTH)
                frames->ip[i + 1] = 0;
            break;
        }
        fp = frame[0];
    }
    u32 id = STACK_ENTRIES + ((u32)(hash ^ (hash >> 32)) & (STACK_ENTRIES - 1));
    struct stack_frames *known = fault_stacks.lookup(&id);
    if (known) {
        if (known->ip[0] != ip || known->ip[1] != frames->ip[1]) {
            stat_inc(STAT_STACK_ERRORS);   /* another stack under the same id */
            return -1;
        }
        return (s32)id;
    }
    if (fault_stacks.insert(&id, frames) != 0) {
        stat_inc(STAT_STACK_ERRORS);       /* the map is full */
        return -1;
    }
    return (s32)id;
#endif
}
