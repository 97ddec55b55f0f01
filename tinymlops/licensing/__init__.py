"""Offline pay-per-query: licence tokens, the tamper-evident usage chain, checkpoints, reconciling and audits.

Pure logic over bytes and plain data (no files, no network): the device agent
(`tinymlops.agent.metering`) keeps the state on disk, the CLI and the gateway feed
exports and checkpoints in.  The pieces:

- `token`: PASETO v4.public licence tokens (Ed25519, the algorithm of the publisher key
  the device already pins) binding licensee, device identity, menu digest, quota,
  validity window and epoch;
- `chain`: the per-inference receipt (32 bytes), the SHA-256 hash chain over receipts and
  the RFC 6962 Merkle root of an interval;
- `checkpoint`: the 196-byte signed checkpoint a device seals per interval;
- `reconcile`: continuity of checkpoints against the last accepted one, with the named
  anomalies (gap, fork, rolled-back counter, replayed checkpoint, edited receipt, ...);
- `audit`: sample sizes for a detection probability, sampled receipts with pymerkle
  inclusion proofs, and canary comparison against the licensed variant.
"""
