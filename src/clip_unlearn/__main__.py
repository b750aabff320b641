"""``python -m clip_unlearn`` runs the CLI (also the entry point for ``torchrun -m clip_unlearn``)."""

from clip_unlearn.cli import main

if __name__ == "__main__":
    main()
