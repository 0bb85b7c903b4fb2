// SPDX-License-Identifier: GPL-2.0
/* python_stacks.h: the Python stack of the writer, from CPython's own frame chain.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

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
/* Whether a thread's process is CPython is remembered in its episode (which lives as long as
 * the thread), so that the copies of a member that is not (a C server: Redis, nginx,
 * PostgreSQL) skip the py_procs lookup: a hash bucket that the copies themselves keep evicting
 * from the cache, ~60 ns per copy on the CoW storm.  The answer holds until user space next
 * registers a CPython process (it bumps py_generation); an exec re-decides too (the
 * generation moves when the new image is registered, and a "yes" is looked up again anyway). */
enum py_known { PY_UNKNOWN = 0, PY_NOT_PYTHON = 1, PY_IS_PYTHON = 2 };
BPF_ARRAY(py_generation, u64, 1);

static __always_inline s32 capture_python_stack(void *ctx, u32 tgid, struct episode_state *ep)
{
#if defined(PYTHON_STACKS) && !PYTHON_STACKS
    return -1;                    /* --no-python-stacks: not even the lookup */
#endif
    int zero = 0;
    u64 *generation = py_generation.lookup(&zero);
    u16 now = generation ? (u16)*generation : 0;
    if (ep->py_known == PY_NOT_PYTHON && ep->py_gen == now)
        return -1;
    struct py_proc *cfg = py_procs.lookup(&tgid);
    ep->py_gen = now;
    ep->py_known = cfg ? PY_IS_PYTHON : PY_NOT_PYTHON;
    if (!cfg)
        return -1;
    return py_capture(cfg, (u32)bpf_get_current_pid_tgid());
}
/* ==== end of Python writer stacks ============================================================ */
