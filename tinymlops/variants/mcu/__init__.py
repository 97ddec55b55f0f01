"""Microcontroller variants: the C bundle TVM's output becomes, and its firmware measured in qemu."""
