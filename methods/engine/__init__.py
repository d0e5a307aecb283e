"""The shared engine: model loading, rollouts with tools, log-probs, rewards, evaluation."""
