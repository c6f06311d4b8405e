"""``python -m tracer``: the same command line as ``tracer``."""

from tracer._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
