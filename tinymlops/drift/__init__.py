"""Drift telemetry: fixed-bin histograms of what devices see and predict, merged and scored at fleet level."""
