"""`python -m fuse_export` (also what `torchrun -m fuse_export` runs)."""

from fuse_export.cli import main

if __name__ == "__main__":
    main()
