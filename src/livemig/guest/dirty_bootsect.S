/*
 * livemig's workload guest: a 512-byte PC boot sector that dirties a chosen
 * working set at a chosen rate, in a chosen pattern.
 *
 * The knobs live in a parameter block at offset 0x1da of the sector
 * (0x7dda in guest memory); `livemig guest dirty` patches them, and
 * livemig.guest.dirty describes them. The shipped image has the defaults.
 *
 * Entered in real mode at 0000:7c00, no BIOS needed. A20 on, flat 32-bit
 * protected mode, the working set and its table zeroed, 'A' on COM1, then
 * for ever, one page write at a time:
 *   1. seq += 1 (a 32-bit count of page writes, never 0 once written)
 *   2. pick page p of the working set: the next one (sequential), a
 *      xorshift32 draw (random), or a draw that lands in the first
 *      hot_pages with probability hot_thresh / 65536 (hotcold)
 *   3. write the page: its first dword is seq (or, with write_bytes = 1,
 *      its first byte is seq's low byte); with write_bytes > 4, the next
 *      (write_bytes - 4) / 4 dwords are mix(seq + i * 0x9e3779b9), i = 1..,
 *      mix(x) = x ^= x >> 16, x *= 0x85ebca6b, x ^= x >> 13
 *   4. then table[p] = seq (the table follows the working set, one dword
 *      per page)
 *   5. wait until the TSC reaches the deadline, then deadline += ticks
 *      (a deadline more than 64 ticks-worth behind restarts from now, so a
 *      guest that was paused or throttled does not burst to catch up)
 *   6. when seq is a multiple of `pages` (a set's worth of writes), print 'B'
 * Invariant, with the guest stopped: every page's stamp equals its table
 * entry, except at most the one page written in step 3 and not yet
 * recorded in step 4.
 *
 * Rebuild with: python -m livemig.guest.build (needs GNU as and ld).
 */
        .code16
        .section .text
        .globl  _start
_start:
        cli
        xorw    %ax, %ax                /* no stack is used in real mode */
        movw    %ax, %ds

        inb     $0x92, %al              /* fast A20 gate */
        orb     $0x02, %al
        outb    %al, $0x92

        lgdtl   gdt_pointer
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $protected

        .code32
protected:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $0x7c00, %esp
        cld

        movl    pages, %ecx             /* zero the set and its table (firmware */
        imull   $1025, %ecx, %ecx       /* may have left data there): pages * */
        movl    base, %edi              /* 1024 dwords, then pages dwords */
        xorl    %eax, %eax
        rep stosl

        movb    $'A', %al
        call    serial_put

        rdtsc                           /* the first deadline: now */
        movl    %eax, deadline
        movl    %edx, deadline + 4

/* Register use in the loop: %ebp seq, %esi the page index (sequential) */
        xorl    %ebp, %ebp
        movl    $-1, %esi
write_one:
        incl    %ebp
        jz      write_one               /* seq is never 0 */

        movb    pattern, %al
        testb   %al, %al
        jnz     draw
        incl    %esi                    /* sequential: the next page */
        cmpl    pages, %esi
        jb      have_page
        xorl    %esi, %esi
        jmp     have_page
draw:
        call    xorshift                /* %eax: a fresh draw */
        cmpb    $2, pattern
        jne     uniform
        movl    %eax, %ecx              /* hotcold: the low half decides */
        andl    $0xffff, %ecx
        call    xorshift
        xorl    %edx, %edx
        cmpl    hot_thresh, %ecx
        jae     cold
        divl    hot_pages
        movl    %edx, %esi
        jmp     have_page
cold:
        movl    pages, %ecx
        subl    hot_pages, %ecx
        divl    %ecx
        movl    %edx, %esi
        addl    hot_pages, %esi
        jmp     have_page
uniform:
        xorl    %edx, %edx
        divl    pages
        movl    %edx, %esi
have_page:
        movl    %esi, %edi              /* %edi: the page's address */
        shll    $12, %edi
        addl    base, %edi
        cmpw    $1, write_bytes
        jne     stamp_dword
        movl    %ebp, %eax
        movb    %al, (%edi)
        jmp     record
stamp_dword:
        movl    %ebp, %eax
        stosl
        movzwl  write_bytes, %ecx       /* the fill: (write_bytes - 4) / 4 */
        shrl    $2, %ecx
        decl    %ecx
        jz      record
        xorl    %ebx, %ebx
fill:
        addl    $0x9e3779b9, %ebx
        movl    %ebp, %eax
        addl    %ebx, %eax
        movl    %eax, %edx
        shrl    $16, %edx
        xorl    %edx, %eax
        imull   $0x85ebca6b, %eax, %eax
        movl    %eax, %edx
        shrl    $13, %edx
        xorl    %edx, %eax
        stosl
        loop    fill
record:
        movl    table, %edi
        movl    %ebp, (%edi,%esi,4)

        movl    ticks, %ecx             /* pacing: 0 is as fast as it can */
        testl   %ecx, %ecx
        jz      reported
        movl    deadline, %ebx
        movl    deadline + 4, %edi
        addl    %ecx, %ebx
        adcl    $0, %edi
        movl    %ebx, deadline
        movl    %edi, deadline + 4
wait_tsc:
        rdtsc
        subl    %ebx, %eax              /* now - deadline, 64-bit */
        sbbl    %edi, %edx
        jns     on_time                 /* reached */
        jmp     wait_tsc
on_time:
        testl   %edx, %edx              /* behind by > 2^32 ticks, or by */
        jnz     restart                 /* more than 64 writes' worth */
        shrl    $6, %eax
        cmpl    %ecx, %eax
        jb      reported
restart:
        rdtsc
        movl    %eax, deadline
        movl    %edx, deadline + 4
reported:
        movl    %ebp, %eax              /* a 'B' when seq is a multiple of pages */
        xorl    %edx, %edx
        divl    pages
        testl   %edx, %edx
        jnz     write_one
        movb    $'B', %al
        call    serial_put
        jmp     write_one

/* xorshift32 on `rng`; the new value in %eax. Clobbers %edx. */
xorshift:
        movl    rng, %eax
        movl    %eax, %edx
        shll    $13, %edx
        xorl    %edx, %eax
        movl    %eax, %edx
        shrl    $17, %edx
        xorl    %edx, %eax
        movl    %eax, %edx
        shll    $5, %edx
        xorl    %edx, %eax
        movl    %eax, rng
        ret

        .include "serial_put.S"

/* The GDT; its null descriptor holds the pointer lgdt loads. */
gdt:
gdt_pointer:
        .word   gdt_end - gdt - 1
        .long   gdt
        .word   0
        .quad   0x00cf9a000000ffff      /* 0x08: flat 4 GiB code */
        .quad   0x00cf92000000ffff      /* 0x10: flat 4 GiB data */
gdt_end:

/* The pacing deadline (64-bit TSC) lives just past the sector. */
        .set    deadline, 0x7e00

/* The parameter block: layout version 1, see livemig/guest/dirty.py. */
        .org    0x1da
params:
        .ascii  "LVDG"                  /* +0x00 magic */
        .byte   1                       /* +0x04 layout version */
pattern:    .byte 0                     /* +0x05 0 sequential, 1 random, 2 hotcold */
write_bytes: .word 1                    /* +0x06 1, or a multiple of 4 up to 4096 */
base:       .long 0x00100000            /* +0x08 first page of the working set */
pages:      .long 25344                 /* +0x0c working-set pages (99 MiB) */
hot_pages:  .long 2534                  /* +0x10 hotcold: the hot set is the first N */
hot_thresh: .long 58982                 /* +0x14 hotcold: P(hot) * 65536 */
ticks:      .long 0                     /* +0x18 TSC ticks per page write; 0: max */
table:      .long 0x06400000            /* +0x1c the stamp table: base + pages * 4096 */
rng:        .long 0x2545f491            /* +0x20 xorshift32 state (never 0) */

        .org    510
        .word   0xaa55
