"""Pure decisions of the operator: plain dicts in, plain dicts out, no IO."""
