"""Latency: timing loops (latency), the roofline (estimate), measured-or-estimated for a target
(target_latency), and the budget verdict worded from a latency record (budget)."""
