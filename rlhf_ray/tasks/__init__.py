"""Prompt tasks generated in code and their rule-based reward functions."""
