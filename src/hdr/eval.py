"""`python -m hdr.eval ckpt_path=X [overrides]`: test checkpoint X (conf/eval.yaml), the
train command's own path for `train=false ckpt_path=X`."""

import sys

from hdr.train import main

if __name__ == "__main__":
    sys.argv[1:1] = ["--config-name=eval"]  # Hydra's own option: the decorator's is train
    main()
