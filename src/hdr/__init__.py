"""hdr: handwritten digit recognition on MNIST with Lightning and Hydra."""
