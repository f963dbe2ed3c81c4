"""Command-line entry points: livemig-system-x86_64 and livemig."""
