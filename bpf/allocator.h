// SPDX-License-Identifier: GPL-2.0
/* allocator.h: allocator calls of members (pid-scoped uprobes): which block
 * each address belongs to.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

/* ---- maps ---------------------------------------------------------------------------------- */
/* Allocator calls in progress, per thread (see "allocator calls" below). */
struct alloc_pending {
    u64 size;
    u64 old_addr;
    u64 memptr;     /* posix_memalign: where the block's address is stored */
    u64 caller;
    u8 call;        /* enum alloc_call */
    u8 allocator;
    u8 pad[6];
};
BPF_HASH(alloc_calls, u32, struct alloc_pending, MAX_THREADS);  /* tid -> call in progress */

/* ---- allocator calls (attribution) -----------------------------------------------------------
 * Uprobes on malloc & co. of the allocator(s) a member uses (glibc, jemalloc, tcmalloc: user
 * space picks the objects and attaches each allocator's entry programs).  Each probe is a perf
 * uprobe scoped to one member (kernel/uprobes.py): the kernel installs its breakpoint in that
 * process alone.  The members map still filters: a vfork child shares its parent's memory,
 * and a `run` command's held child runs cowtrace's code until its exec.  The entry
 * stashes the size (and realloc's old block, posix_memalign's out pointer) per thread and reads
 * the return address at [sp] (`caller`); the uretprobe, back in the caller, emits the block with
 * the allocation stack (a frame-pointer walk from the function's entry would skip the immediate
 * caller; from the return it does not).  free() is emitted at its entry. */
enum alloc_op { ALLOC_OP_ALLOC = 1, ALLOC_OP_FREE = 2, ALLOC_OP_REALLOC = 3 };
enum allocator { ALLOCATOR_GLIBC = 0, ALLOCATOR_JEMALLOC = 1, ALLOCATOR_TCMALLOC = 2 };
enum alloc_call { CALL_MALLOC = 1, CALL_CALLOC = 2, CALL_REALLOC = 3, CALL_POSIX_MEMALIGN = 4,
                  CALL_ALIGNED = 5 };

struct alloc_event {
    u64 ts;
    u64 addr;       /* the block returned (alloc, realloc) or released (free) */
    u64 size;       /* bytes asked for; 0 for free */
    u64 old_addr;   /* realloc: the block it replaced (0 if none) */
    u64 caller;     /* return address into the allocating function */
    u32 pid;
    u32 tid;
    s32 stack_id;   /* allocation stack in user_stacks, -1 if none */
    u8 op;          /* enum alloc_op */
    u8 allocator;   /* enum allocator */
    u8 pad[2];
};


BPF_RINGBUF_OUTPUT(alloc_events, ALLOC_RING_PAGES);

/* The member an allocator call of the current process belongs to (its own tgid), or 0. */
static __always_inline u32 alloc_member(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct member *m = members.lookup(&tgid);
    if (!m || (m->flags & (MF_AWAIT_EXEC | MF_VFORK_CHILD)))
        return 0;
    return tgid;
}

static __always_inline void emit_alloc(struct alloc_event *ev)
{
    if (alloc_events.ringbuf_output(ev, sizeof(*ev), BPF_RB_NO_WAKEUP) != 0)
        stat_inc(STAT_LOST_ALLOC_EVENTS);
}

static __always_inline int alloc_enter(struct pt_regs *ctx, u8 allocator, u8 call)
{
    if (!alloc_member())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct alloc_pending p = {.call = call, .allocator = allocator};
    switch (call) {
    case CALL_MALLOC:
        p.size = PT_REGS_PARM1(ctx);
        break;
    case CALL_CALLOC:
        p.size = PT_REGS_PARM1(ctx) * PT_REGS_PARM2(ctx);
        break;
    case CALL_REALLOC:
        p.old_addr = PT_REGS_PARM1(ctx);
        p.size = PT_REGS_PARM2(ctx);
        break;
    case CALL_POSIX_MEMALIGN:
        p.memptr = PT_REGS_PARM1(ctx);
        p.size = PT_REGS_PARM3(ctx);
        break;
    default:                /* aligned_alloc(alignment, size), memalign(alignment, size) */
        p.size = PT_REGS_PARM2(ctx);
    }
    bpf_probe_read_user(&p.caller, sizeof(p.caller), (void *)PT_REGS_SP(ctx));
    alloc_calls.update(&tid, &p);
    return 0;
}

static __always_inline int free_enter(struct pt_regs *ctx, u8 allocator)
{
    u64 addr = PT_REGS_PARM1(ctx);
    if (addr == 0)
        return 0;
    u32 tgid = alloc_member();
    if (!tgid)
        return 0;
    struct alloc_event ev = {.ts = bpf_ktime_get_ns(), .addr = addr, .pid = tgid,
                             .tid = (u32)bpf_get_current_pid_tgid(), .stack_id = -1,
                             .op = ALLOC_OP_FREE, .allocator = allocator};
    bpf_probe_read_user(&ev.caller, sizeof(ev.caller), (void *)PT_REGS_SP(ctx));
    emit_alloc(&ev);
    return 0;
}

/* The uretprobe of every allocating function of every allocator. */
int cowalloc_return(struct pt_regs *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    struct alloc_pending *pending = alloc_calls.lookup(&tid);
    if (!pending)
        return 0;
    struct alloc_pending p = *pending;
    alloc_calls.delete(&tid);
    u64 ret = PT_REGS_RC(ctx);
    struct alloc_event ev = {.ts = bpf_ktime_get_ns(), .size = p.size, .caller = p.caller,
                             .pid = pid_tgid >> 32, .tid = tid, .stack_id = -1,
                             .op = ALLOC_OP_ALLOC, .allocator = p.allocator};
    if (p.call == CALL_POSIX_MEMALIGN) {
        if (ret != 0)
            return 0;
        bpf_probe_read_user(&ev.addr, sizeof(ev.addr), (void *)p.memptr);
    } else {
        ev.addr = ret;
    }
    if (p.call == CALL_REALLOC) {
        ev.old_addr = p.old_addr;
        if (ev.addr == 0) {
            /* realloc(p, 0) freed p; any other NULL is a failure that left p alone. */
            if (p.size != 0 || p.old_addr == 0)
                return 0;
            ev.op = ALLOC_OP_FREE;
            ev.addr = p.old_addr;
            ev.old_addr = 0;
            emit_alloc(&ev);
            return 0;
        }
        ev.op = ALLOC_OP_REALLOC;
    }
    if (ev.addr == 0)
        return 0;
#ifndef NO_STACKS
    int id = user_stacks.get_stackid(ctx, BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP);
    if (id < 0)
        stat_inc(STAT_ALLOC_STACK_ERRORS);
    else
        ev.stack_id = id;
#endif
    emit_alloc(&ev);
    return 0;
}

/* Entry programs, one set per allocator so that each record says whose call it was. */
#define ALLOCATOR_ENTRIES(NAME, ID)                                                              \
    int cowalloc_##NAME##_malloc(struct pt_regs *ctx) { return alloc_enter(ctx, ID, CALL_MALLOC); } \
    int cowalloc_##NAME##_calloc(struct pt_regs *ctx) { return alloc_enter(ctx, ID, CALL_CALLOC); } \
    int cowalloc_##NAME##_realloc(struct pt_regs *ctx)                                           \
    {                                                                                            \
        return alloc_enter(ctx, ID, CALL_REALLOC);                                               \
    }                                                                                            \
    int cowalloc_##NAME##_posix_memalign(struct pt_regs *ctx)                                    \
    {                                                                                            \
        return alloc_enter(ctx, ID, CALL_POSIX_MEMALIGN);                                        \
    }                                                                                            \
    int cowalloc_##NAME##_aligned_alloc(struct pt_regs *ctx)                                     \
    {                                                                                            \
        return alloc_enter(ctx, ID, CALL_ALIGNED);                                               \
    }                                                                                            \
    int cowalloc_##NAME##_memalign(struct pt_regs *ctx)                                          \
    {                                                                                            \
        return alloc_enter(ctx, ID, CALL_ALIGNED);                                               \
    }                                                                                            \
    int cowalloc_##NAME##_free(struct pt_regs *ctx) { return free_enter(ctx, ID); }

ALLOCATOR_ENTRIES(glibc, ALLOCATOR_GLIBC)
ALLOCATOR_ENTRIES(jemalloc, ALLOCATOR_JEMALLOC)
ALLOCATOR_ENTRIES(tcmalloc, ALLOCATOR_TCMALLOC)
