"""The serving engine: sequences, scheduling, sampling over a backend's forward passes."""
