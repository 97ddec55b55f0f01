"""Drift telemetry that keeps the data on the device (issue 12).

The factory records reference histograms of the build's own data in the signed
menu (`reference.py`, on the features of `features.py`); a device counts its
inferences into the same bins, one window at a time (`window.py`), optionally
noised with OpenDP under a daily privacy budget (`privacy.py`, `policy.py`);
only those counts leave the device, in the report's `drift` field.  At fleet
level the gateway and `tinymlops drift score` check and sum them per fleet ×
revision × device class (`merge.py`) and score each feature against the
reference (`score.py`).
"""
