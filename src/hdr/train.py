"""`python -m hdr.train [overrides]`: the train command (hdr.runs.train)."""

from hdr.runs.train import main

if __name__ == "__main__":
    main()
