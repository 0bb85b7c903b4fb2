// SPDX-License-Identifier: GPL-2.0
/* cowtrace.h: the constants, enums and record structs that the BPF side and
 * user space (cowtrace/kernel/abi.py, held against this file by tests/unit/test_abi.py) share.
 * Part of cowtrace.bpf.c, which includes the headers of bpf/ in dependency order. */
#pragma once

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
    u64 wp_retries; /* copy passes the kernel gave up to retry (map_tracking.h), no copy */
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
    u8 py_known;    /* enum py_known: this thread's process is CPython or not, as of py_gen */
    u8 member_ok;   /* the thread is a member's, counted on tgid, as of member_gen (on_fault) */
    u16 py_gen;     /* py_generation (low bits) when py_known was learnt */
    u32 member_gen; /* member_generation when member_ok was learnt */
    u32 pad;
    u64 tid;        /* the thread; last, cleared last when a slot is given back (64 bits: the
                     * compare-and-swap that claims a slot has no 32-bit form here) */
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
