"""Datasets in their standard formats; they know nothing about masks or experiments."""
