"""One module per command group of the `tinymlops` CLI; `tinymlops.cli` wires them up."""
