/*
 * livemig's built-in test guest: a 512-byte PC boot sector.
 *
 * Entered in real mode at 0000:7c00 (no BIOS is needed or used). It turns on
 * the A20 line through the fast gate at port 0x92, switches to 32-bit
 * protected mode with flat segments, prints 'A' on COM1 and then loops for
 * ever: each pass adds one to the first byte of every 4 KiB page in
 * [1 MiB, 100 MiB), lowest page first, and every 256 passes it prints 'B'.
 *
 * The ordered walk is what makes a migrated copy checkable: with the guest
 * stopped, every page's first byte equals its predecessor's, except at the
 * one page where the walk was interrupted, which is exactly one lower.
 *
 * Rebuild with: python -m livemig.guest.build (needs GNU as and ld).
 */
        .code16
        .section .text
        .globl  _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %ss
        movw    $0x7c00, %sp

        inb     $0x92, %al              /* fast A20 gate: set bit 1 */
        orb     $0x02, %al
        outb    %al, $0x92

        lgdtl   gdt_pointer
        movl    %cr0, %eax
        orl     $1, %eax                /* CR0.PE */
        movl    %eax, %cr0
        ljmpl   $0x08, $protected

        .code32
protected:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $0x7c00, %esp

        movb    $'A', %al
        call    serial_put
        xorl    %ecx, %ecx              /* cl counts passes modulo 256 */

next_pass:
        movl    $0x00100000, %edi       /* 1 MiB */
touch_page:
        incb    (%edi)
        addl    $0x1000, %edi
        cmpl    $0x06400000, %edi       /* 100 MiB */
        jb      touch_page
        incb    %cl
        jnz     next_pass
        movb    $'B', %al
        call    serial_put
        jmp     next_pass

        .include "serial_put.S"

        .p2align 3
gdt:
        .quad   0                       /* null descriptor */
        .quad   0x00cf9a000000ffff      /* 0x08: flat 4 GiB code, ring 0 */
        .quad   0x00cf92000000ffff      /* 0x10: flat 4 GiB data, ring 0 */
gdt_pointer:
        .word   gdt_pointer - gdt - 1
        .long   gdt

        .org    510
        .word   0xaa55
