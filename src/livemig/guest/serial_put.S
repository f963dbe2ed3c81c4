/*
 * Shared by the boot sectors (included, each sector is self-contained):
 * send %al on COM1 once its line status says the transmitter is empty.
 * Clobbers %edx and %bl.
 */
serial_put:
        movb    %al, %bl
        movw    $0x3fd, %dx
wait_empty:
        inb     %dx, %al
        testb   $0x20, %al
        jz      wait_empty
        movb    %bl, %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        ret
