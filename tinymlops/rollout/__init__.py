"""Progressive rollouts: cohorts devices compute for themselves, the strategy's steps, metric analysis."""
