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
/* The program is split by concern into the headers below, each with its maps at the top and a
 * comment per hook; the order is their dependency order.  bcc compiles one text: user space
 * (cowtrace/kernel/bpfsource.py) inlines these includes before handing it over. */
#include "cowtrace.h"
#include "common.h"
#include "records.h"
#include "writer_stacks.h"
#include "python_stacks.h"
#include "faults.h"
#include "map_tracking.h"
#include "allocator.h"
#include "lifecycle.h"
