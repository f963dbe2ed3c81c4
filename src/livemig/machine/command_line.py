"""What livemig's command line takes, as data: the parameters of each
QEMU option group. The parser (cli.options) enforces it and QMP's
query-command-line-options reports it, so the two cannot disagree."""

from __future__ import annotations

# The key=value parameters each option takes, under QEMU's option-group
# names; query-command-line-options answers from this table too.
PARAMETERS: dict[str, frozenset[str]] = {
    "machine": frozenset({"type", "accel", "kernel-irqchip", "usb", "graphics", "vmport",
                          "dump-guest-core", "mem-merge", "memory-backend", "aux-ram-share"}),
    "accel": frozenset({"accel", "thread", "tb-size", "kernel-irqchip", "dirty-ring-size"}),
    "memory": frozenset({"size", "slots", "maxmem"}),
    "smp-opts": frozenset({"cpus", "maxcpus", "sockets", "cores", "threads", "dies"}),
    "name": frozenset({"guest", "debug-threads", "process"}),
    "drive": frozenset({"file", "format", "if", "index", "media", "snapshot", "readonly",
                        "cache", "id", "bus", "unit"}),
    "device": frozenset({"driver", "iobase", "iosize", "id", "drive", "bus", "unit",
                         "bootindex", "chardev", "index", "irq"}),
    "add-fd": frozenset({"fd", "set", "opaque"}),
    "overcommit": frozenset({"mem-lock", "cpu-pm"}),
    "rtc": frozenset({"base", "clock", "driftfix"}),
    "boot-opts": frozenset({"order", "once", "menu", "splash", "splash-time",
                            "reboot-timeout", "strict"}),
    "msg": frozenset({"timestamp", "guest-name"}),
    "mon": frozenset({"chardev", "mode", "pretty", "id"}),
}

# -device: the drivers livemig has and the properties each takes.
DEVICE_PROPERTIES: dict[str, frozenset[str]] = {
    "isa-debug-exit": frozenset({"driver", "id", "iobase", "iosize"}),
    "isa-serial": frozenset({"driver", "id", "chardev", "index", "iobase", "irq"}),
    "ide-hd": frozenset({"driver", "id", "drive", "bus", "unit", "bootindex"}),
}
