"""The pure math of prefkit: log-probs of sampler steps, losses, statistics. Imports torch only (an
import-linter contract in pyproject.toml enforces it); docs/math.md states the conventions."""
