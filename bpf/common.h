// SPDX-License-Identifier: GPL-2.0
/* common.h: the maps every part uses (members and their filter, episodes,
 * health counters) and the helpers around them.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

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
/* Moved by user space each time it adds or forgets members: a thread's episode remembers its
 * membership only as of one value of it (see on_fault). */
BPF_ARRAY(member_generation, u64, 1);
/* Each thread's episode (see find_episode): in episode_slots, the slot its tid maps to, or,
 * when another thread holds that slot, in the episodes hash (tid -> episode).  Deleted when
 * the thread's task is freed. */
#define EPISODE_SLOTS MAX_THREADS       /* a power of two */
_Static_assert((EPISODE_SLOTS & (EPISODE_SLOTS - 1)) == 0, "MAX_THREADS: a power of two");
BPF_ARRAY(episode_slots, struct episode_state, EPISODE_SLOTS);
BPF_HASH(episodes, u32, struct episode_state, MAX_THREADS);
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

/* The entry of a traced process whose own faults count, or NULL: not a member, or one that
 * `cowtrace run` holds before its exec (what it writes then is still cowtrace's own memory). */
static __always_inline struct member *active_member(u32 tgid)
{
    if (!maybe_member(tgid))
        return NULL;
    struct member *m = members.lookup(&tgid);
    if (!m || (m->flags & MF_AWAIT_EXEC))
        return NULL;
    return m;
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

/* ---- episodes ------------------------------------------------------------------------------
 * A member thread's episode is looked up twice per copy (its fault, its allocation).  A hash
 * lookup (jhash and a bucket walk) cost ~0.014x per lookup pair on the CoW storm; an array
 * slot chosen by the tid's low bits costs an inlined index.  Two live threads whose tids share
 * the low bits cannot share the slot: the first takes it (compare-and-swap on its tid field,
 * 0 = free), the other's episode lives in the episodes hash, as every episode did before.  A
 * slot belongs to its thread until the task is freed; only that thread reads or writes it
 * (sched_process_free, after the thread is gone, gives it back).
 *
 * The array slot `tid` maps to (its low bits), whoever holds it: the caller checks its tid. */
static __always_inline struct episode_state *episode_slot(u32 tid)
{
    u32 index = tid & (EPISODE_SLOTS - 1);
    return episode_slots.lookup(&index);
}

/* The thread's episode: its slot when it holds it, else its entry in the hash (NULL: none). */
static __always_inline struct episode_state *find_episode(u32 tid)
{
    struct episode_state *slot = episode_slot(tid);
    if (slot && slot->tid == tid)
        return slot;
    return episodes.lookup(&tid);
}

/* A new episode (EP_NONE) for a thread that has none, or NULL when the hash is full. */
static __always_inline struct episode_state *new_episode(u32 tid)
{
    struct episode_state *slot = episode_slot(tid);
    if (slot && slot->tid == 0 && __sync_val_compare_and_swap(&slot->tid, 0ULL, (u64)tid) == 0)
        return slot;                    /* its other fields were cleared when it was given back */
    struct episode_state fresh = {};
    fresh.tid = tid;
    if (episodes.insert(&tid, &fresh) != 0) {
        stat_inc(STAT_THREADS_FULL);
        return NULL;
    }
    return episodes.lookup(&tid);
}

/* The thread's task is freed: its episode (closed by then) goes. */
static __always_inline void drop_episode(u32 tid)
{
    struct episode_state *slot = episode_slot(tid);
    if (slot && slot->tid == tid) {
        __builtin_memset(slot, 0, __builtin_offsetof(struct episode_state, tid));
        asm volatile("" ::: "memory");  /* cleared before the slot is seen free */
        slot->tid = 0;
        return;
    }
    episodes.delete(&tid);
}
