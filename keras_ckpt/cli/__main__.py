"""`python -m keras_ckpt.cli`: the same as the `keras-ckpt` command."""

from __future__ import annotations

from keras_ckpt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
