// SPDX-License-Identifier: GPL-2.0
/* map_tracking.h: a member's memory map changed (mmap lock taken for
 * writing): user space re-reads /proc/PID/maps.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

/* ---- maps ---------------------------------------------------------------------------------- */
/* Members whose memory map changed since user space last read it: tgid -> time of the first
 * change (see "map changes" below). */
BPF_HASH(map_dirty, u32, u64, MAX_MEMBERS);

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
 * the per-VMA lock, a /proc read) returns after two compares; a non-member's write acquisition
 * after one members lookup.
 * TP_PROTO(struct mm_struct *mm, bool write, bool success); the mm is not read. */
/* ---- copy passes given up (delay accounting's books) ----------------------------------------
 * A write-protect fault in a mapping that has no anon_vma yet (the first write to a private
 * file page or to the zero page in a mapping never written) needs the mmap_lock to prepare one.
 * Taken under the per-VMA lock, the fault tries the mmap_lock for reading (a trylock); when
 * that fails (another thread holds it for writing, or waits for it) the kernel gives the copy
 * up and takes the whole fault again under the mmap_lock.  Delay accounting counts passes
 * through the copy routine, so the pass given up adds one to wpcopy_count with nothing copied
 * (seen as the multiprocessing example's parent one copy short of the kernel, about once in
 * ten loaded runs).  Such a failed trylock is counted here, per member, so that the kernel's
 * books read exactly: copies + zero-fills + wp_retries == wpcopy_count.  do_wp_page on the
 * kernel stack tells it from a fault's other failed trylock (lock_mm_and_find_vma's, before
 * any copy pass).  Failed trylocks are rare: a non-member pays one bitmap test for them. */
#define RETRY_FRAMES 8

static __always_inline void on_failed_read_trylock(struct bpf_raw_tracepoint_args *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct member *m = active_member(tgid);
    if (!m)
        return;
    u64 frames[RETRY_FRAMES] = {};
    if (bpf_get_stack(ctx, frames, sizeof(frames), 0) <= 0)
        return;
    bool in_wp = false;
#pragma unroll
    for (int i = 0; i < RETRY_FRAMES; i++)
        in_wp |= frames[i] >= DO_WP_PAGE_LO && frames[i] < DO_WP_PAGE_HI;
    if (!in_wp)
        return;
    if (m->owner != tgid) {
        u32 owner = m->owner;           /* a vfork child: counted on its parent, as copies are */
        m = members.lookup(&owner);
        if (!m)
            return;
    }
    __sync_fetch_and_add(&m->wp_retries, 1);
}

RAW_TRACEPOINT_PROBE(mmap_lock_acquire_returned)
{
    if (!(ctx->args[2] & 0xff)) {       /* a failed trylock */
        if (!(ctx->args[1] & 0xff))
            on_failed_read_trylock(ctx);
        return 0;
    }
    if (!(ctx->args[1] & 0xff))
        return 0;                       /* a reader */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct member *m = active_member(tgid);
    if (!m)
        return 0;                       /* not traced, or awaiting exec: see active_member */
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
