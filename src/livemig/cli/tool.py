"""``livemig``: the user-facing tool (demo, guest images)."""

from __future__ import annotations

import argparse
import sys

from ..guest import GUESTS, write_image


def _cmd_guest(args: argparse.Namespace) -> int:
    path = write_image(args.output, args.name)
    print(f"wrote {args.name} guest ({path.stat().st_size} bytes) to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..lab.demo import boot_demo

    return boot_demo(accel=args.accel, ram=args.ram, seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livemig", description="livemig: live migration VMM")
    sub = parser.add_subparsers(dest="command", required=True)

    guest = sub.add_parser("guest", help="write a built-in guest image")
    guest.add_argument("name", choices=sorted(GUESTS), help="which guest")
    guest.add_argument("--output", "-o", required=True, help="file to write")
    guest.set_defaults(func=_cmd_guest)

    demo = sub.add_parser("demo", help="run the demo on the built-in guest")
    demo.add_argument("--accel", default="tcg", choices=["tcg", "kvm"],
                      help="accelerator (default tcg, as QEMU's default)")
    demo.add_argument("--ram", default="150M", help="guest RAM (default 150M)")
    demo.add_argument("--seconds", type=float, default=3.0, help="how long to watch")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
