// SPDX-License-Identifier: GPL-2.0
/* lifecycle.h: family membership: fork, exec, exit, free, exit codes.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

/* ---- maps ---------------------------------------------------------------------------------- */
/* Every exec and comm change on the host, counted: only a new program or a new name can make
 * a process match the agent's --comm, so the agent rescans /proc when this moved instead of
 * reading every process' stat file each second.  One add per exec or rename: both are rare. */
BPF_ARRAY(host_renames, u64, 1);

/* ---- lifecycle: fork, exec, exit ------------------------------------------------------------- */
/* The lifecycle record of member m, with its exit fields as they stand.  comm is the current
 * task's, so only a record sent from the process' own context (or its parent's, for a fork)
 * names it: own_context false leaves comm empty. */
static __always_inline void send_proc(u32 type, u32 pid, u32 ppid, struct member *m,
                                      bool own_context)
{
    struct proc_event ev = {};
    ev.ts = bpf_ktime_get_ns();
    ev.type = type;
    ev.pid = pid;
    ev.ppid = ppid;
    ev.root = m->root;
    ev.exit_code = m->exit_code;
    ev.exit_signal = m->exit_signal;
    if (own_context)
        bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    if (proc_events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        stat_inc(STAT_LOST_PROC_EVENTS);
}

/* Fork, exec, exit: sent in the process' (or, for a fork, its parent's) own context. */
static __always_inline void emit_proc(u32 type, u32 pid, u32 ppid, struct member *m)
{
    send_proc(type, pid, ppid, m, true);
}

/* The member of process tgid (NULL: none); thread tid's open episode, if any, is closed: an
 * exec or an exit ends whatever write the thread was in. */
static __always_inline struct member *member_leaving_episode(u32 tgid, u32 tid)
{
    struct member *m = members.lookup(&tgid);
    if (!m)
        return NULL;
    struct episode_state *ep = find_episode(tid);
    if (ep) {
        close_episode(ep, tid, false);
        ep->member_ok = 0;              /* the owner or the flags may change now, or the
                                         * member be deleted (below, or by user space) */
    }
    return m;
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

/* An exec or a comm change anywhere on the host: see host_renames. */
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

/* A member that execs keeps its place (its later forks are traced); a vfork/posix_spawn child
 * that execs leaves its parent's memory and becomes a member of its own, so that what a shell
 * or a launcher starts is traced. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    count_host_rename();
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    struct member *m = member_leaving_episode(tgid, tid);
    if (!m)
        return 0;
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
    struct member *m = member_leaving_episode(tgid, tid);
    if (!m)
        return 0;
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
    struct episode_state *ep = find_episode(tid);
    if (ep) {
        close_episode(ep, tid, false);
        drop_episode(tid);
    }
    map_dirty.delete(&tid);
    alloc_calls.delete(&tid);
    struct member *m = members.lookup(&tid);
    if (m && (m->flags & MF_EXITED)) {
        member_bit_clear(tid);          /* it can fault no more; user space reads it later */
        send_proc(PE_FREE, tid, 0, m, false);   /* freed by another task: no comm of its own */
    }
    return 0;
}
