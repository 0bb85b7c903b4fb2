/* The launcher `cowtrace run` starts its command through (x86-64 Linux; see launcher.py).
 *
 *   argv: LAUNCHER RELEASE_FD ERROR_FD PARENT_PID PATH ARGV0 [ARGS...]
 *
 * No libc, no data, no relocation, no write but to its own fresh stack: between its exec
 * and the command's it makes no copy-on-write copy, so the kernel's per-task copy count of
 * the command's pid holds nothing cowtrace does not see. In order:
 *   1. PR_SET_PDEATHSIG(SIGKILL): from here on it (and the command it becomes) dies with
 *      the thread that spawned it;
 *   2. waits for one byte on RELEASE_FD (EOF: cowtrace died or gave up: exit 1, the
 *      command never starts);
 *   3. checks that its parent is still PARENT_PID (cowtrace died between 1 and 2: exit 1);
 *   4. closes RELEASE_FD, marks ERROR_FD close-on-exec and execs PATH with ARGV0 ARGS... and
 *      its own environment; if that fails, writes errno (4 bytes) to ERROR_FD and exits 127.
 * Assembled into launcher.py's LAUNCHER_CODE (a test checks the two agree).
 */
        .text
        .globl  _start
_start:
        mov     (%rsp), %rbx            /* argc */
        cmp     $6, %rbx
        jl      refuse
        lea     8(%rsp), %r12           /* argv */
        lea     16(%rsp,%rbx,8), %r13   /* envp: right after argv's NULL */
        mov     $157, %eax              /* prctl(PR_SET_PDEATHSIG, SIGKILL) */
        mov     $1, %edi
        mov     $9, %esi
        syscall
        mov     8(%r12), %rdi
        call    number
        mov     %rax, %r14              /* RELEASE_FD */
        mov     16(%r12), %rdi
        call    number
        mov     %rax, %r15              /* ERROR_FD */
        mov     24(%r12), %rdi
        call    number
        mov     %rax, %rbp              /* PARENT_PID */
        sub     $16, %rsp
        xor     %eax, %eax              /* read(RELEASE_FD, sp, 1) */
        mov     %r14, %rdi
        mov     %rsp, %rsi
        mov     $1, %edx
        syscall
        cmp     $1, %rax
        jne     refuse
        mov     $110, %eax              /* getppid() */
        syscall
        cmp     %rbp, %rax
        jne     refuse
        mov     $3, %eax                /* close(RELEASE_FD) */
        mov     %r14, %rdi
        syscall
        mov     $72, %eax               /* fcntl(ERROR_FD, F_SETFD, FD_CLOEXEC) */
        mov     %r15, %rdi
        mov     $2, %esi
        mov     $1, %edx
        syscall
        mov     $59, %eax               /* execve(PATH, &argv[5], envp) */
        mov     32(%r12), %rdi
        lea     40(%r12), %rsi
        mov     %r13, %rdx
        syscall
        neg     %eax                    /* it failed: write(ERROR_FD, &errno, 4) */
        mov     %eax, (%rsp)
        mov     $1, %eax
        mov     %r15, %rdi
        mov     %rsp, %rsi
        mov     $4, %edx
        syscall
        mov     $127, %edi
        jmp     leave
refuse:
        mov     $1, %edi
leave:
        mov     $231, %eax              /* exit_group(status) */
        syscall
        hlt

/* number(%rdi: a decimal string) -> %rax; stops at the first non-digit */
number:
        xor     %eax, %eax
1:      movzbl  (%rdi), %ecx
        sub     $48, %ecx
        cmp     $9, %ecx
        ja      2f
        imul    $10, %rax, %rax
        add     %rcx, %rax
        inc     %rdi
        jmp     1b
2:      ret
