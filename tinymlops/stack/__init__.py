"""The embedded local stack: a Kubernetes API emulator (and friends) on loopback."""
