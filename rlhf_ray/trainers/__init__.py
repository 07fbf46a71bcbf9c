"""Controllers: one per algorithm family, all driving the same role actors."""
