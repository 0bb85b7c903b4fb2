// SPDX-License-Identifier: GPL-2.0
/*
 * calibrate.bpf.c: measures, on the running kernel, where the return addresses that identify
 * a copy-on-write allocation sit on the kernel stack relative to the tracepoint's argument
 * array (the raw tracepoint ctx, which lives on that stack).
 *
 * For each page allocation and each file/shmem rss_stat change made by the calibration process
 * (CALIB_TGID), it records the kernel stack as the unwinder sees it (bpf_get_stack) and the raw
 * words above ctx.  User space finds the words that equal the unwound return addresses into
 * vma_alloc_folio, do_wp_page and exc_page_fault: their indexes are the slots cowtrace.bpf.c
 * reads.  It runs for a fraction of a second at start-up, once per kernel build (cached).
 *
 * It is loaded twice (the second copy records nothing): with two programs on a tracepoint the
 * kernel calls them through the tracepoint's iterator (__traceiter_*), one frame deeper.  That
 * is the layout whenever any other tool shares these tracepoints, so calibration measures the
 * shift it adds.
 */
#include <uapi/linux/ptrace.h>

#define NWORDS 160
#define NFRAMES 24

struct sample {
    u32 kind;          /* 1 = mm_page_alloc, 2 = rss_stat */
    u32 arg;           /* alloc: order; rss_stat: counter */
    u64 gfp;
    s64 nframes_bytes; /* bpf_get_stack's return */
    u64 frames[NFRAMES];
    u64 words[NWORDS];
};

BPF_RINGBUF_OUTPUT(samples, 256);
BPF_PERCPU_ARRAY(scratch, struct sample, 1);

static __always_inline int record(void *ctx, u32 kind, u32 arg, u64 gfp)
{
    if ((bpf_get_current_pid_tgid() >> 32) != CALIB_TGID)
        return 0;
    int zero = 0;
    struct sample *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    s->kind = kind;
    s->arg = arg;
    s->gfp = gfp;
    s->nframes_bytes = bpf_get_stack(ctx, s->frames, sizeof(s->frames), 0);
    /* Read in chunks: the stack may end (guard page) before NWORDS words are read. */
#pragma unroll
    for (int chunk = 0; chunk < NWORDS / 8; chunk++)
        bpf_probe_read_kernel(&s->words[chunk * 8], 64, (char *)ctx + chunk * 64);
    samples.ringbuf_output(s, sizeof(*s), 0);
    return 0;
}

RAW_TRACEPOINT_PROBE(mm_page_alloc)
{
    if (ctx->args[1] != 0)
        return 0;
    return record(ctx, 1, 0, ctx->args[2]);
}

RAW_TRACEPOINT_PROBE(rss_stat)
{
    int counter = (int)ctx->args[1];
    if (counter != 0 && counter != 3)
        return 0;
    return record(ctx, 2, counter, 0);
}
