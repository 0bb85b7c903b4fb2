// SPDX-License-Identifier: GPL-2.0
/*
 * cowtrace.bpf.c: exact copy-on-write accounting for traced process families.
 *
 * What is counted.  After fork(), a write to a page that is still shared enters the kernel as a
 * write fault on a present, write-protected pte (error_code & 3 == 3).  do_wp_page() then either
 *   - COPIES it: allocates an order-0 page and copies (wp_page_copy, inlined here), or
 *   - ZERO-FILLS it: same path, but the old pte was the shared zero page (__GFP_ZERO), or
 *   - REUSES it: no allocation, the writer was the last one mapping the page.
 *
 * How it is told apart with tracepoints only.  This kernel has no kprobes and refuses fentry, and
 * its headers do not match it, so nothing here reads a kernel struct.  Instead:
 *   - exceptions:page_fault_{user,kernel} open a per-thread "episode" for every write-protect
 *     fault of a member (the kernel-mode one covers read() into a buffer, set/clear_child_tid);
 *   - kmem:mm_page_alloc decides whether an allocation is do_wp_page's copy by reading a few
 *     words of the kernel stack at offsets from the tracepoint's argument array, which lives on
 *     that stack.  Those offsets and the return addresses expected there (into vma_alloc_folio,
 *     do_wp_page and exc_page_fault) are measured at start-up by calibrate.bpf.c on this very
 *     kernel, and come in as -D constants.  Reading three words costs nanoseconds; a stack walk
 *     per allocation costs microseconds here.  An allocation made by do_wp_page that was not
 *     reached from exc_page_fault is a get_user_pages write (direct I/O, process_vm_writev):
 *     it is a copy without a fault, so without an address;
 *   - an episode that ends (next fault, exec, exit) without an allocation was a REUSE;
 *   - kmem:rss_stat from inside do_wp_page on the file-pages counter means the page copied was
 *     a page-cache page of a MAP_PRIVATE file: the copy's source is "file".
 *
 * Counts live in the members map and are incremented here, whatever user space does.  One
 * 40-byte detail record per classified event goes to user space without waking anyone
 * (BPF_RB_NO_WAKEUP): user space drains in bulk on its own clock.  The records of the fault
 * path are gathered per CPU and handed to the fault_events ring FAULT_BATCH at a time (see
 * "detail records" below); a record that does not fit is counted in stats[STAT_LOST_EVENTS];
 * the counts stay exact.
 *
 * Family membership is kept here too, so that a child forked a microsecond after attach is
 * tracked from its first instruction: task:task_newtask adds every process forked by a member
 * before it can run.  Threads (CLONE_THREAD) are their process; vfork/posix_spawn children
 * (CLONE_VM without CLONE_THREAD) share their parent's memory, so their writes are counted on
 * the parent until they exec (then they are members of their own) or exit.
 */
#include <uapi/linux/ptrace.h>

/* ---- constants: the calibrated ones come from user space as -D flags ---------------------- */
#ifndef SLOT_ALLOC_VMA            /* words above ctx: return address into vma_alloc_folio */
#error "cowtrace.bpf.c needs the calibration constants (-DSLOT_ALLOC_VMA=...)"
#endif
/* SLOT_ALLOC_WP, SLOT_ALLOC_EXC: return addresses into do_wp_page and exc_page_fault.
 * SLOT_RSS_WP: for rss_stat, the return address into do_wp_page.
 * VMA_ALLOC_LO/HI, DO_WP_PAGE_LO/HI, EXC_PF_LO/HI: the functions' text ranges (kallsyms).
 * MAX_MEMBERS, MAX_THREADS, FAULT_RING_PAGES, PROC_RING_PAGES: table sizes.
 * STACK_ENTRIES, ALLOC_RING_PAGES: attribution table sizes; NO_STACKS: no
 * native stacks at all (--no-stacks). */
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 32768
#endif
#ifndef ALLOC_RING_PAGES
#define ALLOC_RING_PAGES 1
#endif
#define STACK_DEPTH 32                  /* frames kept per stack: deeper stacks are truncated */

#define USER_ADDR_END 0x800000000000ULL /* x86-64: user addresses lie below */
#define PF_PRESENT_WRITE 3              /* error_code bits: protection fault, on a write */
#define GFP_HIGHUSER_MOVABLE_BITS 0x100ccaULL
#define GFP_ZERO_BIT 0x100ULL
#define CLONE_VM_FLAG 0x100ULL
#define CLONE_THREAD_FLAG 0x10000ULL
#define MM_FILEPAGES 0
#define MM_SHMEMPAGES 3

enum kind { KIND_COPY = 1, KIND_REUSE = 2, KIND_ZERO_FILL = 3 };
enum source { SOURCE_ANON = 0, SOURCE_FILE = 1 };
enum via { VIA_USER = 0, VIA_KERNEL = 1, VIA_GUP = 2 };
/* EP_CAPTURING: on_fault is walking the writer's stacks; a fault those walks take (user memory
 * read with page faults disabled: a frame pointer into an unmapped page) enters
 * page_fault_kernel in this thread, and must not be taken for the thread's next fault. */
enum episode { EP_NONE = 0, EP_WP_FAULT = 1, EP_COPIED = 2, EP_CAPTURING = 3 };
enum proc_event_type { PE_FORK = 1, PE_EXEC = 2, PE_EXIT = 3, PE_FREE = 4, PE_MAPS = 5 };
/* STAT_LOST_MAP_EVENTS: PE_MAPS records lost (proc_events full). */
enum stat { STAT_LOST_EVENTS = 0, STAT_LOST_PROC_EVENTS = 1, STAT_MEMBERS_FULL = 2,
            STAT_THREADS_FULL = 3, STAT_STACK_ERRORS = 4, STAT_LOST_MAP_EVENTS = 5,
            STAT_LOST_ALLOC_EVENTS = 6, STAT_ALLOC_STACK_ERRORS = 7, NSTATS = 8 };
/* MF_AWAIT_EXEC: `cowtrace run` holds its command between fork and exec; what that child writes
 * is cowtrace's own memory, so counting starts at the exec. */
enum member_flags { MF_VFORK_CHILD = 1, MF_EXITED = 2, MF_AWAIT_EXEC = 4 };

/* One member of a traced family.  Counters are updated with atomic adds: threads of one
 * process fault on several CPUs at once. */
struct member {
    u32 owner;      /* tgid the writes are counted on: itself, or the vfork parent */
    u32 root;       /* tgid of the family's root (one BPF instance can trace several) */
    u32 flags;      /* enum member_flags */
    s32 exit_code;  /* from the SIGCHLD sent at exit (see signal_generate); -1 until known */
    u32 exit_signal;/* the fatal signal delivered with the default action, 0 if none */
    u32 sent_signal;/* the last possibly fatal signal sent to it (see signal_generate) */
    u64 copies;     /* all copies, file_copies and gup_copies included */
    u64 file_copies;
    u64 gup_copies;
    u64 reuses;
    u64 zero_fills;
};

/* The open episode of one thread: a write-protect fault whose outcome is not known yet, or a
 * copy whose detail record waits for the source (anon or file) to be known. */
struct episode_state {
    u64 ts;
    u64 addr;
    u32 tgid;       /* counting owner */
    u32 pid;        /* the writer process (tgid of the thread) */
    s32 stack_id;   /* of the copy (EP_COPIED), see struct cow_event */
    s32 pystack_id;
    u8 state;       /* enum episode */
    u8 via;         /* enum via */
    u8 source;      /* enum source */
    u8 kind;        /* EP_COPIED: the waiting record's enum kind (copy or zero-fill) */
    u8 pad[4];
};

/* Detail record of one classified event: fixed 40 bytes, parsed in bulk by user space. */
struct cow_event {
    u64 ts;         /* bpf_ktime_get_ns() of the fault (CLOCK_MONOTONIC) */
    u64 addr;       /* page-aligned user address, 0 when the kernel gave none (gup) */
    u32 pid;        /* writer tgid */
    u32 tid;        /* writer thread */
    s32 stack_id;   /* writer's native user stack (attribution), -1 when not captured */
    s32 pystack_id; /* writer's Python stack (CPython processes), -1 when not captured */
    u8 kind;        /* enum kind */
    u8 source;      /* enum source */
    u8 via;         /* enum via */
    u8 pad[5];
};

/* Lifecycle record: rare, consumed one by one. */
struct proc_event {
    u64 ts;
    u32 type;       /* enum proc_event_type */
    u32 pid;
    u32 ppid;
    u32 root;
    s32 exit_code;
    u32 exit_signal;
    char comm[16];
};

/* ---- maps ----------------------------------------------------------------------------------- */
/* tgid -> member: the family and its exact counters.  User space adds the root and the members
 * that already existed at attach, and deletes exited members once it has read them. */
BPF_HASH(members, u32, struct member, MAX_MEMBERS);
/* The membership filter: one bit per pid, checked before the members hash on every hot hook.
 * A process that is not traced (every other process on the host) then pays two array loads
 * the verifier inlines, instead of a hash lookup (jhash and a bucket walk, ~30 ns here), on
 * each of its page faults, page allocations and rss counter moves.  A set bit means "maybe a
 * member": the hash stays the truth.  Two bitmaps, so that each has a single writer: BPF sets
 * and clears member_bits_kernel with atomic ORs and ANDs (forks here, frees here), user space
 * writes member_bits_user (members it adds at attach and adoption, cleared when it forgets
 * them) with plain word writes that no BPF program races with.  Sized for PID_MAX_LIMIT on
 * 64-bit kernels (2^22 pids: 64 KiB words, 512 KiB each), so that raising pid_max while
 * cowtrace runs cannot hide a member. */
#define MEMBER_BITMAP_WORDS ((1U << 22) / 64)
BPF_ARRAY(member_bits_kernel, u64, MEMBER_BITMAP_WORDS);
BPF_ARRAY(member_bits_user, u64, MEMBER_BITMAP_WORDS);
/* tid -> open episode.  Deleted when the thread's task is freed. */
BPF_HASH(episodes, u32, struct episode_state, MAX_THREADS);
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
/* Members whose memory map changed since user space last read it: tgid -> time of the first
 * change (see "map changes" below). */
BPF_HASH(map_dirty, u32, u64, MAX_MEMBERS);
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
/* Health counters: detail records lost, tables full. */
BPF_PERCPU_ARRAY(stats, u64, NSTATS);

/* ---- helpers -------------------------------------------------------------------------------- */
/* Health counters are per CPU: plain adds, no atomics. */
static __always_inline void stat_add(int index, u64 amount)
{
    u64 *v = stats.lookup(&index);
    if (v)
        *v += amount;
}

static __always_inline void stat_inc(int index)
{
    stat_add(index, 1);
}

/* Whether `tgid` may be a member (see the membership filter): false for certain otherwise. */
static __always_inline bool maybe_member(u32 tgid)
{
    u32 word = tgid >> 6;
    u64 bit = 1ULL << (tgid & 63);
    u64 *bits = member_bits_kernel.lookup(&word);
    if (bits && (*bits & bit))
        return true;
    bits = member_bits_user.lookup(&word);
    return bits && (*bits & bit);
}

static __always_inline void member_bit_set(u32 tgid)
{
    u32 word = tgid >> 6;
    u64 *bits = member_bits_kernel.lookup(&word);
    if (bits)
        __sync_fetch_and_or(bits, 1ULL << (tgid & 63));
}

static __always_inline void member_bit_clear(u32 tgid)
{
    u32 word = tgid >> 6;
    u64 *bits = member_bits_kernel.lookup(&word);
    if (bits)
        __sync_fetch_and_and(bits, ~(1ULL << (tgid & 63)));
}

/* The member whose counters a write by this process goes to (the vfork parent for a vfork
 * child), or NULL when the process is not traced. */
static __always_inline struct member *counting_member(u32 tgid)
{
    if (!maybe_member(tgid))
        return NULL;
    struct member *m = members.lookup(&tgid);
    if (m && m->owner != tgid) {
        u32 owner = m->owner;
        m = members.lookup(&owner);
    }
    return m;
}

/* The word `slot` 8-byte words above the tracepoint's argument array on the kernel stack. */
static __always_inline u64 stack_word(void *ctx, int slot)
{
    u64 word = 0;
    bpf_probe_read_kernel(&word, sizeof(word), (char *)ctx + slot * 8);
    return word;
}

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

/* ==== Python writer stacks (issue 5): CPython frame-chain walk ================================
 * CPython builds here have no frame pointers, so a native walk never reaches Python code.  The
 * interpreter keeps its own frame chain, though: _PyRuntime -> interpreters.head -> thread
 * states -> the thread's current _PyInterpreterFrame -> previous -> ... each with its code
 * object.  User space (cowtrace/python/) tells this program, per CPython member, where
 * _PyRuntime is and the struct offsets of that version (a generated table for 3.11/3.12, the
 * process' own _Py_DebugOffsets for 3.13).  Here we only collect, per frame, the code object's
 * address and where its instruction pointer stands in it (3.11/3.12 prev_instr, 3.13
 * instr_ptr), plus the native leaf (user ip) and two interpreter flags; names and lines are
 * resolved in user space, once per code object and instruction (the code object's line table).
 *
 * The writing thread's own thread state: the per-interpreter thread list is walked comparing
 * each PyThreadState.native_thread_id with the current tid (3.11-3.13 all keep it), and the
 * match is cached per tid (re-checked with one read).  Just after fork the child's
 * native_thread_id still holds the parent's tid until PyOS_AfterFork_Child updates it: then
 * the GIL's last holder (the forking thread) stands in.
 *
 * Non-Python processes pay one hash lookup (py_procs). */
#define PY_MAX_FRAMES 32          /* deeper stacks keep their innermost 32 frames */
#define PY_MAX_THREADS 64         /* thread states compared (once per thread: cached) */
#define PY_MAX_STACKS 16384
#define PY_WINDOW 64              /* most bytes of a frame read at once: code, previous, instr */
/* A frame is stored in one word: the code object's address (user space: below 2^47) in the low
 * 47 bits, and in the high 17 the instruction's distance from the code object's start in code
 * units (the bytecode is inline in the code object), PY_NO_INSTR when it does not fit (a code
 * object over 256 KiB, a frame not started): the stack entry is no bigger than with code
 * addresses alone, and a stack is identified by its (code, instruction) pairs. */
#define PY_CODE_BITS 47
#define PY_CODE_MASK ((1ULL << PY_CODE_BITS) - 1)
#define PY_NO_INSTR 0x1ffffULL
enum py_flags { PYF_GC = 1, PYF_FINALIZING = 2, PYF_TRUNCATED = 4, PYF_GIL_HOLDER = 8 };

/* Where things are in one CPython process; -1 = "not in this version". */
struct py_proc {
    u64 runtime;                  /* address of _PyRuntime */
    s32 runtime_interpreters_head;
    s32 runtime_finalizing;
    s32 runtime_gil;              /* 3.11: the GIL state inside _PyRuntime */
    s32 interp_gil_ptr;           /* 3.12+: pointer to the GIL state in the interpreter */
    s32 gil_last_holder;
    s32 interp_threads_head;
    s32 interp_gc_collecting;
    s32 tstate_next;
    s32 tstate_native_thread_id;
    s32 tstate_frame;             /* 3.11/3.12: cframe; 3.13: current_frame */
    s32 cframe_current_frame;     /* -1 when tstate_frame is the frame itself */
    s32 frame_window;             /* start of the bytes read from each frame */
    s32 frame_code;               /* offsets below are relative to frame_window */
    s32 frame_previous;
    s32 frame_instr;
    s32 frame_window_size;        /* bytes read from each frame, at most PY_WINDOW */
};

/* One captured stack: frames innermost first (code | instruction << PY_CODE_BITS, above), the
 * native leaf, flags (enum py_flags).  Slots from depth on are stale scratch contents: readers
 * stop at depth. */
struct py_stack {
    u64 leaf_ip;
    u32 depth;
    u32 flags;
    u64 code[PY_MAX_FRAMES];
};

struct py_scratch {
    struct py_stack stack;
    u8 window[128];
};

BPF_HASH(py_procs, u32, struct py_proc, MAX_MEMBERS);      /* tgid -> layout (user space) */
BPF_TABLE("lru_hash", u32, u64, py_tstates, MAX_THREADS);  /* tid -> its PyThreadState */
BPF_HASH(py_stacks, u32, struct py_stack, PY_MAX_STACKS);  /* stack id -> stack */
BPF_PERCPU_ARRAY(py_scratch, struct py_scratch, 1);
/* A stack seen for the first time: wakes user space, which names its code objects while the
 * writer still lives (a short-lived worker may be gone by the next drain). */
struct py_new_stack {
    u64 runtime;
    u32 pid;
    s32 stack_id;
};
BPF_RINGBUF_OUTPUT(py_new_stacks, 16);

static __always_inline u64 py_read_u64(u64 addr)
{
    u64 value = 0;
    bpf_probe_read_user(&value, sizeof(value), (void *)addr);
    return value;
}

static __always_inline u64 py_current_tstate(struct py_proc *cfg, u64 interp, u32 tid, u32 *flags)
{
    u64 *cached = py_tstates.lookup(&tid);
    if (cached && py_read_u64(*cached + cfg->tstate_native_thread_id) == tid)
        return *cached;
    u64 tstate = py_read_u64(interp + cfg->interp_threads_head);
#pragma clang loop unroll(disable)
    for (int i = 0; i < PY_MAX_THREADS && tstate; i++) {
        if (py_read_u64(tstate + cfg->tstate_native_thread_id) == tid) {
            py_tstates.update(&tid, &tstate);
            return tstate;
        }
        tstate = py_read_u64(tstate + cfg->tstate_next);
    }
    u64 gil = 0;
    if (cfg->runtime_gil >= 0)
        gil = cfg->runtime + cfg->runtime_gil;
    else if (cfg->interp_gil_ptr >= 0)
        gil = py_read_u64(interp + cfg->interp_gil_ptr);
    if (!gil)
        return 0;
    *flags |= PYF_GIL_HOLDER;
    return py_read_u64(gil + cfg->gil_last_holder);
}

/* The native leaf: the user-mode ip saved on kernel entry (x86-64 pt_regs.ip, uapi layout). */
static __always_inline u64 py_leaf_ip(void)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
    u64 ip = 0;
    bpf_probe_read_kernel(&ip, sizeof(ip), (char *)regs + 16 * 8);
    return ip;
}

static __always_inline s32 py_capture(struct py_proc *cfg, u32 tid)
{
    int zero = 0;
    struct py_scratch *scratch = py_scratch.lookup(&zero);
    if (!scratch)
        return -1;
    struct py_stack *stack = &scratch->stack;
    u32 flags = 0;
    u64 interp = py_read_u64(cfg->runtime + cfg->runtime_interpreters_head);
    if (!interp)
        return -1;
    if (py_read_u64(cfg->runtime + cfg->runtime_finalizing))
        flags |= PYF_FINALIZING;
    u32 collecting = 0;
    bpf_probe_read_user(&collecting, sizeof(collecting), (void *)(interp + cfg->interp_gc_collecting));
    if (collecting)
        flags |= PYF_GC;
    u64 tstate = py_current_tstate(cfg, interp, tid, &flags);
    u64 frame = 0;
    if (tstate) {
        frame = py_read_u64(tstate + cfg->tstate_frame);
        if (frame && cfg->cframe_current_frame >= 0)
            frame = py_read_u64(frame + cfg->cframe_current_frame);
    }
    /* Every frame goes in, the C-stack shims (3.12+) too: skipping them here would make the
     * verifier follow both outcomes of every frame.  User space drops them by their code. */
    u32 depth = 0;
    u64 hash = 0xcbf29ce484222325ULL;
#pragma clang loop unroll(disable)
    for (int i = 0; i < PY_MAX_FRAMES; i++) {
        if (!frame)
            break;
        u32 size = cfg->frame_window_size & (PY_WINDOW - 1 | PY_WINDOW);
        if (bpf_probe_read_user(scratch->window, size, (void *)(frame + cfg->frame_window)))
            break;
        u64 code = *(u64 *)(scratch->window + (cfg->frame_code & 0x78)) & PY_CODE_MASK;
        u64 instr = *(u64 *)(scratch->window + (cfg->frame_instr & 0x78));
        u64 units = (instr - code) >> 1;
        if (instr < code || units >= PY_NO_INSTR)
            units = PY_NO_INSTR;
        code |= units << PY_CODE_BITS;
        stack->code[i] = code;
        hash = (hash ^ code) * 0x100000001b3ULL;
        depth = i + 1;
        frame = *(u64 *)(scratch->window + (cfg->frame_previous & 0x78));
    }
    if (depth == PY_MAX_FRAMES && frame)
        flags |= PYF_TRUNCATED;   /* the chain is longer: its outermost frames are left out */
    stack->depth = depth;
    stack->flags = flags;
    stack->leaf_ip = py_leaf_ip();
    hash = (hash ^ stack->leaf_ip) * 0x100000001b3ULL;
    hash = (hash ^ flags) * 0x100000001b3ULL;
    u32 id = (u32)(hash ^ (hash >> 32)) & 0x7fffffff;
    /* Identical stacks share one entry.  An entry of another stack under the same id (a hash
     * collision) or a full map yields no stack rather than a wrong one. */
    struct py_stack *known = py_stacks.lookup(&id);
    if (known) {
        if (known->depth != depth || known->leaf_ip != stack->leaf_ip ||
            (depth && known->code[0] != stack->code[0]))
            return -1;
        return (s32)id;
    }
    if (py_stacks.insert(&id, stack) != 0)
        return -1;
    struct py_new_stack note = {.runtime = cfg->runtime, .pid = bpf_get_current_pid_tgid() >> 32,
                                .stack_id = (s32)id};
    py_new_stacks.ringbuf_output(&note, sizeof(note), 0);
    return (s32)id;
}

/* A forked child runs the same interpreter at the same addresses: it inherits the layout before
 * it can run, so its first copies have their Python stacks too. */
static __always_inline void py_inherit(u32 parent, u32 child)
{
    struct py_proc *cfg = py_procs.lookup(&parent);
    if (cfg)
        py_procs.update(&child, cfg);
}

/* exec replaced the image (user space decides again), or the process is gone. */
static __always_inline void py_forget(u32 tgid)
{
    py_procs.delete(&tgid);
}

/* The Python stack of the writing thread when the process is a CPython interpreter, or -1. */
static __always_inline s32 capture_python_stack(void *ctx, u32 tgid)
{
#if defined(PYTHON_STACKS) && !PYTHON_STACKS
    return -1;                    /* --no-python-stacks: not even the lookup */
#endif
    struct py_proc *cfg = py_procs.lookup(&tgid);
    if (!cfg)
        return -1;
    return py_capture(cfg, (u32)bpf_get_current_pid_tgid());
}
/* ==== end of Python writer stacks ============================================================ */

/* ---- writer stacks, out of line --------------------------------------------------------------
 * The writer's stacks (the native walk above, then the Python one) are taken by a program of
 * their own, reached from the fault programs by tail call, so that the fault programs stay
 * small.  Measured on the CoW storm (bench/interleaved.py): with the stack code inlined the
 * fault program was 3.8 KB of machine code, and a C program, which runs none of the Python
 * part, was slowed 0.015x more than with the same code out of line.  User space installs the
 * two programs in writer_stack_progs right after loading (kernel/tracer.py); a fault that
 * comes before that, or a failed tail call, just has no stacks. */
#if !defined(NO_STACKS) || !defined(PYTHON_STACKS) || PYTHON_STACKS
#define WRITER_STACKS 1
#else
#define WRITER_STACKS 0
#endif
enum writer_prog { WRITER_PROG_USER = 0, WRITER_PROG_KERNEL = 1 };
BPF_PROG_ARRAY(writer_stack_progs, 2);

/* The open episode's stacks: only for an episode that on_fault left EP_CAPTURING. */
static __always_inline int take_writer_stacks(void *ctx, void *user_regs)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    struct episode_state *ep = episodes.lookup(&tid);
    if (!ep || ep->state != EP_CAPTURING)
        return 0;
    /* User-mode faults: our own walk from the faulting registers; the kernel writing for the
     * process (read() into a buffer...): the stack of the system call, taken by the kernel's
     * walker, which finds the user registers itself. */
    ep->stack_id = user_regs ? walk_fault_stack(user_regs) : capture_user_stack(ctx);
    ep->pystack_id = capture_python_stack(ctx, tgid);
    ep->state = EP_WP_FAULT;
    return 0;
}

/* Tail-call targets (not attached anywhere): raw tracepoint programs run with the fault
 * program's context, page_fault_user's or page_fault_kernel's. */
int writer_stacks_user(struct bpf_raw_tracepoint_args *ctx)
{
    return take_writer_stacks(ctx, (void *)ctx->args[1]);
}

int writer_stacks_kernel(struct bpf_raw_tracepoint_args *ctx)
{
    return take_writer_stacks(ctx, NULL);
}

/* ---- hot path: faults, allocations ------------------------------------------------------------ */
static __always_inline int on_fault(void *ctx, void *user_regs, u64 address, u64 error_code,
                                    u8 via)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    if (!maybe_member(tgid))
        return 0;
    struct member *m = members.lookup(&tgid);
    if (!m || (m->flags & MF_AWAIT_EXEC))
        return 0;
    bool wp = (error_code & PF_PRESENT_WRITE) == PF_PRESENT_WRITE;
    struct episode_state *ep = episodes.lookup(&tid);
    if (ep && ep->state == EP_CAPTURING)
        return 0;                       /* a fault of our own stack walk, see EP_CAPTURING */
    if (ep) {
        close_episode(ep, tid, true);
    } else if (wp) {
        struct episode_state fresh = {};
        if (episodes.insert(&tid, &fresh) != 0) {
            stat_inc(STAT_THREADS_FULL);
            return 0;
        }
        ep = episodes.lookup(&tid);
        if (!ep)
            return 0;
    }
    if (wp && ep) {
        ep->ts = bpf_ktime_get_ns();
        ep->addr = address & ~0xfffULL;
        ep->tgid = m->owner;
        ep->pid = tgid;
        ep->via = via;
        ep->source = SOURCE_ANON;
        /* The writer's stacks are taken now, by the tail-called program, at the fault's entry,
         * not at the copy: the walk reads user memory, possibly the very page being faulted on
         * (a frame-pointer walk without frame pointers follows rbp, which often points at the
         * object being written), and reading it sets the pte's accessed bit.  Done inside the
         * copy, that makes the kernel's pte_same() check fail after the page was copied: the
         * copy is thrown away and the fault retried, a second copy.  Before handle_mm_fault
         * reads the pte, the walk changes nothing the kernel compares. */
        ep->stack_id = -1;
        ep->pystack_id = -1;
#if WRITER_STACKS
        ep->state = EP_CAPTURING;
        writer_stack_progs.call(ctx, user_regs ? WRITER_PROG_USER : WRITER_PROG_KERNEL);
        /* Only reached when the tail call did not happen: the episode has no stacks. */
#endif
        ep->state = EP_WP_FAULT;
    }
    return 0;
}

/* A write by the process' own instructions. */
RAW_TRACEPOINT_PROBE(page_fault_user)
{
    /* TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code) */
    return on_fault(ctx, (void *)ctx->args[1], ctx->args[0], ctx->args[2], VIA_USER);
}

/* A write by the kernel into user memory on the process' behalf (copy_to_user, put_user). */
RAW_TRACEPOINT_PROBE(page_fault_kernel)
{
    u64 address = ctx->args[0];
    if (address >= USER_ADDR_END)
        return 0;
    return on_fault(ctx, NULL, address, ctx->args[2], VIA_KERNEL);
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
    if (!maybe_member(tgid))
        return 0;
    struct member *self = members.lookup(&tgid);
    if (!self || (self->flags & MF_AWAIT_EXEC))
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

    struct episode_state *ep = episodes.lookup(&tid);
    u64 ts, addr = 0;
    u8 via = VIA_GUP;
    s32 stack_id = -1, pystack_id = -1;
    if (from_fault && ep && ep->state == EP_WP_FAULT) {
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
    struct episode_state *ep = episodes.lookup(&tid);
    if (ep && ep->state == EP_COPIED && ep->kind == KIND_COPY)
        ep->source = SOURCE_FILE;
    return 0;
}

/* ---- lifecycle: fork, exec, exit ------------------------------------------------------------- */
static __always_inline void emit_proc(u32 type, u32 pid, u32 ppid, struct member *m)
{
    struct proc_event ev = {};
    ev.ts = bpf_ktime_get_ns();
    ev.type = type;
    ev.pid = pid;
    ev.ppid = ppid;
    ev.root = m->root;
    ev.exit_code = m->exit_code;
    ev.exit_signal = m->exit_signal;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    if (proc_events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        stat_inc(STAT_LOST_PROC_EVENTS);
}

/* Runs in the parent, inside copy_process(), before the new task can run: a process forked by
 * a member joins the family here, so none of its faults is missed. */
TRACEPOINT_PROBE(task, task_newtask)
{
    u64 flags = args->clone_flags;
    if (flags & CLONE_THREAD_FLAG)
        return 0;                       /* a thread is its process */
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!maybe_member(parent))
        return 0;
    struct member *pm = members.lookup(&parent);
    if (!pm || (pm->flags & MF_VFORK_CHILD))
        return 0;
    u32 child = args->pid;
    struct member cm = {};
    cm.root = pm->root;
    cm.exit_code = -1;
    if (flags & CLONE_VM_FLAG) {
        cm.owner = pm->owner;           /* vfork/posix_spawn: the parent's memory */
        cm.flags = MF_VFORK_CHILD;
    } else {
        cm.owner = child;
    }
    if (members.insert(&child, &cm) != 0) {
        stat_inc(STAT_MEMBERS_FULL);
        return 0;
    }
    member_bit_set(child);
    if (!(flags & CLONE_VM_FLAG)) {
        py_inherit(parent, child);
        emit_proc(PE_FORK, child, parent, &cm);
    }
    return 0;
}

/* A member that execs keeps its place (its later forks are traced); a vfork/posix_spawn child
 * that execs leaves its parent's memory and becomes a member of its own, so that what a shell
 * or a launcher starts is traced. */
/* Every exec and comm change on the host, counted: only a new program or a new name can make
 * a process match the agent's --comm, so the agent rescans /proc when this moved instead of
 * reading every process' stat file each second.  One add per exec or rename: both are rare. */
BPF_ARRAY(host_renames, u64, 1);

static __always_inline void count_host_rename(void)
{
    int zero = 0;
    u64 *renames = host_renames.lookup(&zero);
    if (renames)
        __sync_fetch_and_add(renames, 1);
}

RAW_TRACEPOINT_PROBE(task_rename)
{
    count_host_rename();
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    count_host_rename();
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    struct member *m = members.lookup(&tgid);
    if (!m)
        return 0;
    struct episode_state *ep = episodes.lookup(&tid);
    if (ep)
        close_episode(ep, tid, false);
    if (m->flags & MF_VFORK_CHILD) {
        /* It stops sharing its parent's memory now: from here on it is a member of its own,
         * forked (as far as the family goes) by the parent it borrowed memory from. */
        u32 parent = m->owner;
        m->owner = tgid;
        m->flags = 0;
        emit_proc(PE_FORK, tgid, parent, m);
    }
    m->flags &= ~MF_AWAIT_EXEC;
    py_forget(tgid);
    emit_proc(PE_EXEC, tgid, 0, m);
    return 0;
}

/* Signals whose default action does not end the process: SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP,
 * SIGTTIN, SIGTTOU, SIGURG and SIGWINCH. */
#define NONFATAL_DEFAULT_SIGNALS ((1ULL << 17) | (1ULL << 18) | (1ULL << 19) | (1ULL << 20) | \
                                  (1ULL << 21) | (1ULL << 22) | (1ULL << 23) | (1ULL << 28))

/* A possibly fatal signal sent to a member (kill(2), a fault's SIGSEGV, ...).  Remembered
 * because of what happens next if its action is the default one: the kernel starts a group
 * exit and queues SIGKILL to every thread, so signal_deliver sees SIGKILL, not this signal. */
TRACEPOINT_PROBE(signal, signal_generate)
{
    u32 target = args->pid;
    int sig = args->sig;
    if (args->result != 0 || sig <= 0 || sig >= 64 || (NONFATAL_DEFAULT_SIGNALS & (1ULL << sig)))
        return 0;                       /* result 0: TRACE_SIGNAL_DELIVERED (queued) */
    struct member *m = members.lookup(&target);
    if (m)
        m->sent_signal = sig;
    return 0;
}

#define SIGCHLD_SIGNAL 17
#define CLD_EXITED 1
#define CLD_KILLED 2
#define CLD_DUMPED 3
#define SIGINFO_CODE 8      /* struct kernel_siginfo: UAPI siginfo layout, x86-64 */
#define SIGINFO_STATUS 24   /* _sifields._sigchld._status (after _pid at 16, _uid at 20) */

/* The exit status, without a syscall tracepoint on exit_group (any syscall tracepoint puts every
 * task on the host on the slow syscall path).  At exit the kernel tells the parent with SIGCHLD
 * from the exiting process' own context (exit_notify's do_notify_parent, or the last thread's
 * release_task for a leader that exited first), after sched_process_exit: si_code CLD_EXITED
 * with the exit code in si_status, or CLD_KILLED/CLD_DUMPED with the signal.  The tracepoint
 * fires whatever the parent's handler, but not at all when the parent set SIGCHLD to SIG_IGN or
 * SA_NOCLDWAIT (the kernel then reaps without a signal): the code stays unknown (-1), and the
 * status falls back to the fatal signal seen at delivery, else "exit 0".  The PE_FREE record
 * and the members map carry the code; the earlier PE_EXIT record cannot.
 * TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
 * int result); nothing is read from the task. */
RAW_TRACEPOINT_PROBE(signal_generate)
{
    if ((int)ctx->args[0] != SIGCHLD_SIGNAL)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct member *m = members.lookup(&tgid);
    if (!m || !(m->flags & MF_EXITED))
        return 0;                       /* not a member's exit notification */
    u64 info = ctx->args[1];
    if (info < 4096)
        return 0;                       /* SEND_SIG_NOINFO / SEND_SIG_PRIV: no siginfo */
    s32 code = 0, status = 0;
    if (bpf_probe_read_kernel(&code, sizeof(code), (void *)(info + SIGINFO_CODE)) != 0 ||
        bpf_probe_read_kernel(&status, sizeof(status), (void *)(info + SIGINFO_STATUS)) != 0)
        return 0;
    if (code == CLD_EXITED)
        m->exit_code = status & 0xff;
    else if ((code == CLD_KILLED || code == CLD_DUMPED) && status > 0 && status < 64)
        m->exit_signal = status;
    return 0;
}

/* A signal delivered with its default action (no handler) that ends the process: the process
 * dies of it.  The first one is kept.  A SIGKILL that nobody sent is the kernel's group-exit
 * SIGKILL: the signal that killed the process is the one sent before it. */
TRACEPOINT_PROBE(signal, signal_deliver)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct member *m = members.lookup(&tgid);
    int sig = args->sig;
    if (!m || m->exit_signal != 0 || sig <= 0 || sig >= 64)
        return 0;
    if (args->sa_handler != 0) {
        if (m->sent_signal == sig)
            m->sent_signal = 0;         /* handled: it will not be what kills the process */
        return 0;
    }
    if (NONFATAL_DEFAULT_SIGNALS & (1ULL << sig))
        return 0;
    if (sig == 9 && m->sent_signal != 0)
        sig = m->sent_signal;
    m->exit_signal = sig;
    return 0;
}

/* A thread exits; when it is the last one (group_dead), the process is done running.  Its
 * counters may still move (the kernel clears clear_child_tid after this point), so the final
 * read waits for sched_process_free. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    struct member *m = members.lookup(&tgid);
    if (!m)
        return 0;
    struct episode_state *ep = episodes.lookup(&tid);
    if (ep)
        close_episode(ep, tid, false);
    if (!args->group_dead)
        return 0;
    if (m->flags & MF_VFORK_CHILD) {
        members.delete(&tgid);
        member_bit_clear(tgid);
        return 0;
    }
    m->flags |= MF_EXITED;
    py_forget(tgid);
    emit_proc(PE_EXIT, tgid, 0, m);
    return 0;
}

/* The task struct is freed: nothing more can happen in its name.  Close its episode for good;
 * for a process' main thread, tell user space its counters are final. */
TRACEPOINT_PROBE(sched, sched_process_free)
{
    u32 tid = args->pid;
    struct episode_state *ep = episodes.lookup(&tid);
    if (ep) {
        close_episode(ep, tid, false);
        episodes.delete(&tid);
    }
    map_dirty.delete(&tid);
    alloc_calls.delete(&tid);
    struct member *m = members.lookup(&tid);
    if (m && (m->flags & MF_EXITED)) {
        member_bit_clear(tid);          /* it can fault no more; user space reads it later */
        struct proc_event ev = {};
        ev.ts = bpf_ktime_get_ns();
        ev.type = PE_FREE;
        ev.pid = tid;
        ev.root = m->root;
        ev.exit_code = m->exit_code;
        ev.exit_signal = m->exit_signal;
        if (proc_events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
            stat_inc(STAT_LOST_PROC_EVENTS);
    }
    return 0;
}

/* ---- map changes (attribution) ---------------------------------------------------------------
 * A process' memory map changes only under its mmap_lock held for writing: mmap, munmap, mremap,
 * brk, mprotect, the loader after an exec (and fork's dup_mmap and exit_mmap, which cost a
 * needless re-read at most).  So the lock's write acquisitions by a member mark its map as
 * changed, once until user space has re-read /proc/PID/maps (map_dirty, deleted by user space
 * just before the read), with one PE_MAPS record that wakes user space.  The acquisition, not
 * the release: munmap and a shrinking brk or mremap downgrade the lock and release it as a
 * reader; and the acquisition precedes the change, so faults older than the record were made
 * against the map before it.  This hook is off the syscall path: syscall tracepoints would put
 * every task on the host on the slow syscall path.  A read acquisition (a page fault that missed
 * the per-VMA lock, a /proc read) returns after one compare; a non-member's write acquisition
 * after one members lookup.
 * TP_PROTO(struct mm_struct *mm, bool write, bool success); the mm is not read. */
RAW_TRACEPOINT_PROBE(mmap_lock_acquire_returned)
{
    if (!(ctx->args[1] & 0xff) || !(ctx->args[2] & 0xff))
        return 0;                       /* a reader, or a failed trylock */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!maybe_member(tgid))
        return 0;
    struct member *m = members.lookup(&tgid);
    if (!m || (m->flags & MF_AWAIT_EXEC))
        return 0;                       /* awaiting exec: still cowtrace's own memory */
    u32 owner = m->owner;               /* a vfork child changes its parent's map */
    if (map_dirty.lookup(&owner))
        return 0;                       /* already marked: user space will re-read */
    u64 ts = bpf_ktime_get_ns();
    if (map_dirty.insert(&owner, &ts) != 0)
        return 0;                       /* another thread marked it first (or table full) */
    if (owner != tgid) {
        m = members.lookup(&owner);
        if (!m)
            return 0;
    }
    struct proc_event ev = {};
    ev.ts = ts;
    ev.type = PE_MAPS;
    ev.pid = owner;
    ev.root = m->root;
    ev.exit_code = -1;
    if (proc_events.ringbuf_output(&ev, sizeof(ev), 0) != 0) {
        stat_inc(STAT_LOST_MAP_EVENTS);
        map_dirty.delete(&owner);       /* lost: let the next change try again */
    }
    return 0;
}

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
