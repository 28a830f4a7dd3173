"""Access history, predictors (hoeffding, markov) and the prefetch policy."""
