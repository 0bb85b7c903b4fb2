// SPDX-License-Identifier: GPL-2.0
/* faults.h: the hot path: write faults open episodes, do_wp_page's page
 * allocations make them copies or zero-fills, rss_stat says a copy's source was a file.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

/* ---- writer stacks, out of line --------------------------------------------------------------
 * The writer's stacks (the native walk above, then the Python one) are taken in programs of
 * their own, reached from the fault programs by tail call, so that the fault programs stay
 * small.  Measured on the CoW storm (bench/interleaved.py): with the stack code inlined the
 * fault program was 3.8 KB of machine code, and a C program, which runs none of the Python
 * part, was slowed 0.015x more than with the same code out of line.  A member's fault is
 * handled whole in the tail-called program (on_fault with its stacks), so that its episode is
 * looked up once: the attached program only checks the membership filter and calls it
 * (default tracer on the CoW storm, 2026-12-05: 1.118x -> 1.109x against the stacks taken
 * in a second pass over the episode).  User space installs the two programs in
 * writer_stack_progs right after loading (kernel/tracer.py); a fault that comes before that,
 * or a failed tail call, is handled by the attached program, without stacks. */
#if !defined(NO_STACKS) || !defined(PYTHON_STACKS) || PYTHON_STACKS
#define WRITER_STACKS 1
#else
#define WRITER_STACKS 0
#endif
enum writer_prog { WRITER_PROG_USER = 0, WRITER_PROG_KERNEL = 1 };
BPF_PROG_ARRAY(writer_stack_progs, 2);

/* ---- hot path: faults, allocations ------------------------------------------------------------ */
/* A write fault of a process the membership filter let through (maybe_member: the fault
 * programs below check it once, before the tail call, so that a member's fault with stacks
 * on does not check it twice). */
static __always_inline int on_fault(void *ctx, void *user_regs, u64 address, u64 error_code,
                                    u8 via, bool with_stacks)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    bool wp = (error_code & PF_PRESENT_WRITE) == PF_PRESENT_WRITE;
    /* Whether the thread is a member's, and whose writes it makes: its episode remembers the
     * answer (member_ok, the owner in tgid) from its last write fault, so that a thread's
     * faults after its first skip the members lookup (bench/interleaved.py, core tracer:
     * 1.117x -> 1.101x on the CoW storm, 2026-12-05).  What could change the answer forgets
     * it: exec and exit (they change the entry or end the thread: lifecycle.h), and user
     * space adding or forgetting members (it moves member_generation).  Forks only add new
     * processes, whose threads have no episode yet. */
    struct episode_state *ep = find_episode(tid);
    int zero = 0;
    u64 *generation = member_generation.lookup(&zero);
    u32 member_gen = generation ? (u32)*generation : 0;
    u32 owner;
    if (ep && ep->member_ok && ep->member_gen == member_gen) {
        owner = ep->tgid;
    } else {
        struct member *m = members.lookup(&tgid);
        if (!m || (m->flags & MF_AWAIT_EXEC))
            return 0;
        owner = m->owner;
    }
    if (ep && ep->state == EP_CAPTURING)
        return 0;                       /* a fault of our own stack walk, see EP_CAPTURING */
    if (ep) {
        close_episode(ep, tid, true);
    } else if (wp) {
        ep = new_episode(tid);
        if (!ep)
            return 0;
    }
    if (wp && ep) {
        ep->ts = bpf_ktime_get_ns();
        ep->addr = address & ~0xfffULL;
        ep->tgid = owner;
        ep->pid = tgid;
        ep->via = via;
        ep->source = SOURCE_ANON;
        ep->member_ok = 1;
        ep->member_gen = member_gen;
        /* The writer's stacks are taken now, by the tail-called program, at the fault's entry,
         * not at the copy: the walk reads user memory, possibly the very page being faulted on
         * (a frame-pointer walk without frame pointers follows rbp, which often points at the
         * object being written), and reading it sets the pte's accessed bit.  Done inside the
         * copy, that makes the kernel's pte_same() check fail after the page was copied: the
         * copy is thrown away and the fault retried, a second copy.  Before handle_mm_fault
         * reads the pte, the walk changes nothing the kernel compares. */
        ep->stack_id = -1;
        ep->pystack_id = -1;
        if (with_stacks) {
            /* User-mode faults: our own walk from the faulting registers; the kernel writing
             * for the process (read() into a buffer...): the stack of the system call, taken
             * by the kernel's walker, which finds the user registers itself. */
            ep->state = EP_CAPTURING;
            ep->stack_id = user_regs ? walk_fault_stack(user_regs) : capture_user_stack(ctx);
            ep->pystack_id = capture_python_stack(ctx, tgid, ep);
        }
        ep->state = EP_WP_FAULT;
    }
    return 0;
}

/* Tail-call targets (not attached anywhere): raw tracepoint programs run with the fault
 * program's context, page_fault_user's or page_fault_kernel's. */
int writer_stacks_user(struct bpf_raw_tracepoint_args *ctx)
{
    return on_fault(ctx, (void *)ctx->args[1], ctx->args[0], ctx->args[2], VIA_USER, true);
}

int writer_stacks_kernel(struct bpf_raw_tracepoint_args *ctx)
{
    return on_fault(ctx, NULL, ctx->args[0], ctx->args[2], VIA_KERNEL, true);
}

/* A write by the process' own instructions. */
RAW_TRACEPOINT_PROBE(page_fault_user)
{
    /* TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code) */
    if (!maybe_member(bpf_get_current_pid_tgid() >> 32))
        return 0;
#if WRITER_STACKS
    writer_stack_progs.call(ctx, WRITER_PROG_USER);
#endif
    return on_fault(ctx, (void *)ctx->args[1], ctx->args[0], ctx->args[2], VIA_USER, false);
}

/* A write by the kernel into user memory on the process' behalf (copy_to_user, put_user). */
RAW_TRACEPOINT_PROBE(page_fault_kernel)
{
    u64 address = ctx->args[0];
    if (address >= USER_ADDR_END)
        return 0;
    if (!maybe_member(bpf_get_current_pid_tgid() >> 32))
        return 0;
#if WRITER_STACKS
    writer_stack_progs.call(ctx, WRITER_PROG_KERNEL);
#endif
    return on_fault(ctx, NULL, address, ctx->args[2], VIA_KERNEL, false);
}

/* Every page allocation: keep do_wp_page's, the copies and zero-fills. */
RAW_TRACEPOINT_PROBE(mm_page_alloc)
{
    /* TP_PROTO(struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype) */
    u64 gfp = ctx->args[2];
    if (ctx->args[1] != 0 || (gfp & GFP_HIGHUSER_MOVABLE_BITS) != GFP_HIGHUSER_MOVABLE_BITS)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    struct member *self = active_member(tgid);
    if (!self)
        return 0;
    /* The direct layout (only cowtrace on this tracepoint), else the iterator's (another
     * program shares it: one more frame, ITER_SHIFT_ALLOC words).  The words of both layouts
     * up to do_wp_page's are read with one helper call when they lie close together (each
     * bpf_probe_read_kernel costs ~15 ns here: this is a member's every page allocation). */
    int shift = 0;
#if SLOT_ALLOC_WP >= SLOT_ALLOC_VMA && SLOT_ALLOC_WP + ITER_SHIFT_ALLOC - SLOT_ALLOC_VMA < 24
#define ALLOC_WINDOW (SLOT_ALLOC_WP + ITER_SHIFT_ALLOC - SLOT_ALLOC_VMA + 1)
    u64 window[ALLOC_WINDOW] = {};
    bpf_probe_read_kernel(window, sizeof(window), (char *)ctx + SLOT_ALLOC_VMA * 8);
    u64 ret_vma = window[0];
    if (ret_vma < VMA_ALLOC_LO || ret_vma >= VMA_ALLOC_HI) {
        shift = ITER_SHIFT_ALLOC;
        ret_vma = window[ITER_SHIFT_ALLOC];
        if (ret_vma < VMA_ALLOC_LO || ret_vma >= VMA_ALLOC_HI)
            return 0;
    }
    u64 ret_wp = shift ? window[ALLOC_WINDOW - 1] : window[SLOT_ALLOC_WP - SLOT_ALLOC_VMA];
#else
    u64 ret_vma = stack_word(ctx, SLOT_ALLOC_VMA);
    if (ret_vma < VMA_ALLOC_LO || ret_vma >= VMA_ALLOC_HI) {
        shift = ITER_SHIFT_ALLOC;
        ret_vma = stack_word(ctx, SLOT_ALLOC_VMA + ITER_SHIFT_ALLOC);
        if (ret_vma < VMA_ALLOC_LO || ret_vma >= VMA_ALLOC_HI)
            return 0;
    }
    u64 ret_wp = stack_word(ctx, SLOT_ALLOC_WP + shift);
#endif
    if (ret_wp < DO_WP_PAGE_LO || ret_wp >= DO_WP_PAGE_HI)
        return 0;
    u64 ret_exc = stack_word(ctx, SLOT_ALLOC_EXC + shift);
    bool from_fault = ret_exc >= EXC_PF_LO && ret_exc < EXC_PF_HI;
    struct member *m = self;
    if (self->owner != tgid) {
        u32 owner = self->owner;
        m = members.lookup(&owner);
        if (!m)
            return 0;
    }
    bool zero = gfp & GFP_ZERO_BIT;
    if (zero)
        __sync_fetch_and_add(&m->zero_fills, 1);
    else
        __sync_fetch_and_add(&m->copies, 1);

    struct episode_state *ep = find_episode(tid);
    u64 ts, addr = 0;
    u8 via = VIA_GUP;
    s32 stack_id = -1, pystack_id = -1;
    bool seen = from_fault && ep && ep->state == EP_WP_FAULT;
    if (seen) {
        ts = ep->ts;            /* this allocation is the outcome of the open fault */
        addr = ep->addr;
        via = ep->via;
        stack_id = ep->stack_id;
        pystack_id = ep->pystack_id;
    } else {
        /* Timed here: a clock read costs ~40 ns in this VM, so a copy whose fault was seen
         * keeps the fault's time instead. */
        ts = bpf_ktime_get_ns();
        /* No stacks for a copy without a fault (get_user_pages) or one we did not see open:
         * taking them now could perturb this very copy (see on_fault). */
        if (!from_fault) {
            if (!zero)
                __sync_fetch_and_add(&m->gup_copies, 1);
        } else {
            via = VIA_USER;     /* a fault we did not see open (tracing began mid-fault) */
        }
        if (ep)
            close_episode(ep, tid, false);
    }
    u8 kind = zero ? KIND_ZERO_FILL : KIND_COPY;
    if (zero) {
        stack_id = -1;          /* zero-fills copy nothing: no writer to blame */
        pystack_id = -1;
    }
    if (!ep) {
        /* No episode table entry for this thread: record it at once. */
        emit(ts, addr, tgid, tid, kind, SOURCE_ANON, via, stack_id, pystack_id, false);
        return 0;
    }
    if (seen) {
        /* The fault's episode already holds its time, address, writer and stacks. */
        ep->kind = kind;
        if (zero) {
            ep->stack_id = -1;
            ep->pystack_id = -1;
        }
        ep->state = EP_COPIED;
        return 0;
    }
    ep->kind = kind;
    ep->stack_id = stack_id;
    ep->pystack_id = pystack_id;
    ep->ts = ts;
    ep->addr = addr;
    ep->tgid = m->owner;
    ep->pid = tgid;
    ep->via = via;
    ep->source = SOURCE_ANON;
    /* The record waits: for rss_stat to say anon or file (a copy), then for the thread's next
     * fault, which puts it in its CPU's batch (see "detail records"). */
    ep->state = EP_COPIED;
    return 0;
}

/* The file-pages counter moved inside do_wp_page: the copy just made came from a page-cache
 * page of a MAP_PRIVATE file. */
RAW_TRACEPOINT_PROBE(rss_stat)
{
    /* TP_PROTO(struct mm_struct *mm, int member) */
    int counter = (int)ctx->args[1];
    if (counter != MM_FILEPAGES && counter != MM_SHMEMPAGES)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    struct member *m = counting_member(tgid);
    if (!m || (m->flags & MF_AWAIT_EXEC))
        return 0;
    u64 ret_wp = stack_word(ctx, SLOT_RSS_WP);
    if (ret_wp < DO_WP_PAGE_LO || ret_wp >= DO_WP_PAGE_HI) {
        ret_wp = stack_word(ctx, SLOT_RSS_WP + ITER_SHIFT_RSS);  /* iterator layout */
        if (ret_wp < DO_WP_PAGE_LO || ret_wp >= DO_WP_PAGE_HI)
            return 0;
    }
    __sync_fetch_and_add(&m->file_copies, 1);
    struct episode_state *ep = find_episode(tid);
    if (ep && ep->state == EP_COPIED && ep->kind == KIND_COPY)
        ep->source = SOURCE_FILE;
    return 0;
}
