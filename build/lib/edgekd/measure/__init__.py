"""What a run is judged by: timing loops (latency), the roofline (estimate), measured-or-estimated
for a target (target_latency), the latency budget verdict (budget), and the accuracy budget (accuracy)."""
